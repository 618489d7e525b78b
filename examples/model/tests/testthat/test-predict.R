# examples/model's tests, written with valve's test client: each local_valve() serves plumber.R
# with a real R worker on a free port until the test ends. Run them from the repository root:
#   Rscript -e 'testthat::test_dir("examples/model/tests/testthat")'
library(valve)

api <- normalizePath(test_path("..", "..", "plumber.R"))

predict_request <- function(url, body) valve_request(url, "/predict", json = body)

test_that("/predict answers one car and several, in order", {
  url <- local_valve(api)
  resp <- httr2::req_perform(predict_request(url, list(wt = 2.62, hp = 110, am = 1)))
  expect_equal(httr2::resp_status(resp), 200)
  one <- httr2::resp_body_json(resp)$mpg[[1]]
  expect_true(one > 15 && one < 30)

  cars <- list(list(wt = 2.62, hp = 110, am = 1), list(wt = 5.4, hp = 230, am = 0))
  mpg <- unlist(httr2::resp_body_json(httr2::req_perform(predict_request(url, cars)))$mpg)
  expect_length(mpg, 2)
  expect_equal(mpg[[1]], one)
  expect_true(mpg[[2]] < mpg[[1]], "a heavier, stronger automatic uses more fuel")
})

test_that("wrong input gets 400 and a message saying what to fix", {
  url <- local_valve(api)
  cases <- list(
    list(body = list(wt = "2.62", hp = 110, am = 1), says = "wt must be a number, got a string"),
    list(body = list(wt = 2.62, hp = 110), says = "missing am"),
    list(body = list(wt = 2.62, hp = 110, am = 3), says = "am must be 0")
  )
  for (case in cases) {
    resp <- httr2::req_perform(predict_request(url, case$body))
    expect_equal(httr2::resp_status(resp), 400)
    expect_match(httr2::resp_body_json(resp)$error, case$says, fixed = TRUE)
  }
  resp <- httr2::req_perform(httr2::req_body_raw(valve_request(url, "/predict"), "{not json",
                                                 type = "application/json"))
  expect_equal(httr2::resp_status(resp), 400)
  expect_match(httr2::resp_body_json(resp)$error, "not valid JSON")
})

test_that("a wrong type never reaches R: valve answers 422 naming the parameter", {
  url <- local_valve(api)
  # /refit's @param resamples:int is checked before R sees the request (/predict reads its body
  # with its own parser, json_text, which valve leaves to R).
  resp <- httr2::req_perform(valve_request(url, "/refit", resamples = "lots", method = "POST"))
  expect_equal(httr2::resp_status(resp), 422)
  detail <- httr2::resp_body_json(resp)$detail
  expect_length(detail, 1)
  expect_equal(unlist(detail[[1]]$loc), c("query", "resamples"))
  expect_equal(detail[[1]]$input, "lots")
})

test_that("/health names the model, and two workers answer at once", {
  url <- local_valve(api, n_min = 2, n_max = 2)
  health <- httr2::resp_body_json(httr2::req_perform(valve_request(url, "/health")))
  expect_equal(health, list(status = "ok", model = "mpg ~ wt + hp + am"))
  status <- valve_status(valve_server_of(url))
  expect_equal(sum(status$workers$state == "ready"), 2)
})

test_that("/refit runs as a job: 202 and a Location, polled, then the answer it gives at once", {
  url <- local_valve(api)
  refit <- function() valve_request(url, "/refit", resamples = 300, seed = 7, method = "POST")
  at_once <- httr2::req_perform(refit())
  expect_equal(httr2::resp_status(at_once), 200)
  expect_equal(httr2::resp_body_json(at_once)$resamples, 300)

  # Prefer: respond-async: valve answers 202 at once and runs the request on a worker later.
  accepted <- httr2::req_perform(httr2::req_headers(refit(), Prefer = "respond-async"))
  expect_equal(httr2::resp_status(accepted), 202)
  expect_equal(httr2::resp_header(accepted, "Preference-Applied"), "respond-async")
  job <- httr2::resp_header(accepted, "Location")
  expect_match(job, "^/_valve/jobs/[0-9a-f]{32}$")

  # GET on the job: 202 with its state (queued, running) until it is done, then the answer.
  deadline <- Sys.time() + 60
  repeat {
    polled <- httr2::req_perform(valve_request(url, job))
    if (httr2::resp_status(polled) != 202) break
    expect_true(httr2::resp_body_json(polled)$state %in% c("queued", "running"))
    expect_true(Sys.time() < deadline)
    Sys.sleep(0.1)
  }
  expect_equal(httr2::resp_status(polled), 200)
  expect_identical(httr2::resp_body_string(polled), httr2::resp_body_string(at_once))
  expect_equal(httr2::resp_header(polled, "Content-Type"),
               httr2::resp_header(at_once, "Content-Type"))
})

test_that("/predict_batch answers, for each /predict body, what /predict answers for it alone", {
  url <- local_valve(api)
  bodies <- list(list(wt = 2.62, hp = 110, am = 1),
                 list(list(wt = 5.4, hp = 230, am = 0), list(wt = 1.9, hp = 66, am = 1)))
  alone <- lapply(bodies, function(body) {
    httr2::resp_body_string(httr2::req_perform(predict_request(url, body)))
  })
  resp <- httr2::req_perform(valve_request(url, "/predict_batch", json = bodies))
  expect_equal(httr2::resp_status(resp), 200)
  elements <- jsonlite::fromJSON(httr2::resp_body_string(resp), simplifyVector = FALSE)
  expect_equal(elements, lapply(alone, jsonlite::fromJSON, simplifyVector = FALSE))
  # A body /predict would refuse fails the batch (valve then sends each request alone).
  resp <- httr2::req_perform(valve_request(url, "/predict_batch",
                                           json = list(list(wt = "heavy", hp = 110, am = 1))))
  expect_equal(httr2::resp_status(resp), 400)
})
