-- wrk script for examples/model/load: POST one car to /predict.
wrk.method = "POST"
wrk.body = '{"wt": 2.62, "hp": 110, "am": 1}'
wrk.headers["Content-Type"] = "application/json"
