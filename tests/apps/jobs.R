# Plumber API of the long-jobs tests (test_jobs.py): a slow fit whose answer has a status, a
# header and a body of its own, the same for the same request on any worker.

#* Sleeps `seconds`, then fits mpg on wt and answers 201 with the input echoed and X-Fit set.
#* @serializer unboxedJSON
#* @post /fit
function(req, res, seconds = "0") {
  Sys.sleep(as.numeric(seconds))
  input <- jsonlite::fromJSON(req$postBody)
  fit <- lm(mpg ~ wt, data = mtcars)
  res$status <- 201L
  res$setHeader("X-Fit", "lm")
  list(input = input, coef = unname(round(coef(fit), 6)), seconds = as.numeric(seconds),
       request_id = req$HTTP_X_REQUEST_ID)
}

#* A quick answer.
#* @serializer unboxedJSON
#* @get /quick
function() {
  list(ok = TRUE)
}
