# An API for valve's micro-batching tests (test_batching.py): /double and its batch route, a batch
# route that answers the wrong number of elements, and a slow route that holds a worker.
library(plumber)

double_one <- function(body) list(y = body$x * 2, x = body$x)

#* @serializer unboxedJSON
#* @post /double
function(req) {
  Sys.sleep(0.1)
  double_one(jsonlite::fromJSON(req$postBody, simplifyVector = FALSE))
}

#* @serializer unboxedJSON
#* @post /double_batch
function(req, res) {
  Sys.sleep(0.1)
  bodies <- jsonlite::fromJSON(req$postBody, simplifyVector = FALSE)
  res$setHeader("X-Batch-Size", length(bodies))
  lapply(bodies, double_one)
}

#* The single route that /bad batches to: like /double.
#* @serializer unboxedJSON
#* @post /bad
function(req) {
  Sys.sleep(0.1)
  double_one(jsonlite::fromJSON(req$postBody, simplifyVector = FALSE))
}

#* @serializer unboxedJSON
#* @post /strict
function(req) {
  Sys.sleep(0.1)
  double_one(jsonlite::fromJSON(req$postBody, simplifyVector = FALSE))
}

#* A broken batch route: one element too few.
#* @serializer unboxedJSON
#* @post /bad_batch
function(req) {
  bodies <- jsonlite::fromJSON(req$postBody, simplifyVector = FALSE)
  lapply(bodies[-1], double_one)
}

#* @serializer unboxedJSON
#* @get /sleep
function(s = "1") {
  Sys.sleep(as.numeric(s))
  list(slept = as.numeric(s))
}

#* @get /hello
function() "hello"
