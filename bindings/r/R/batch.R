# Micro-batching: a plumber handler for the batch route valve sends batches to (a route's
# batch-path in valve's config file). valve gathers concurrent JSON requests to the route, sends
# their bodies as one JSON array, and gives each client its element of the array answered.

# Makes a batch route's handler from the route's one-request function. `fun` takes one parsed
# request body (as jsonlite::fromJSON(body, simplifyVector = FALSE) gives it) and returns what the
# single route returns for it. With `vectorised = TRUE`, `fun` takes the list of parsed bodies and
# returns a list of as many results, in order: one call for the batch, e.g. one predict() on all
# rows, which is where batching saves most. If any body fails (`fun` signals an error, or the
# results do not match), the handler answers 500, and valve sends each request of the batch alone
# to the single route (batch-retry-singly), so that each gets exactly that route's answer.
#
#   #* @post /predict_batch
#   #* @serializer unboxedJSON
#   #* @parser text
#   valve::valve_batch_route(function(cars) lapply(cars, predict_one))
valve_batch_route <- function(fun, vectorised = FALSE) {
  if (!is.function(fun)) stop("`fun` must be a function", call. = FALSE)
  force(vectorised)
  function(req, res) {
    fail <- function(message) {
      res$status <- 500
      list(error = message, status = 500)
    }
    body <- req$postBody
    bodies <- tryCatch(jsonlite::fromJSON(if (is.null(body)) "" else body,
                                          simplifyVector = FALSE),
                       error = function(e) NULL)
    if (!is.list(bodies) || !is.null(names(bodies))) {
      return(fail("a batch route takes a JSON array of request bodies"))
    }
    results <- tryCatch(if (vectorised) fun(bodies) else lapply(bodies, fun),
                        error = function(e) structure(conditionMessage(e), class = "batch_error"))
    if (inherits(results, "batch_error")) return(fail(paste("a request failed:", results)))
    if (!is.list(results) || length(results) != length(bodies)) {
      return(fail(sprintf("%d results for %d requests", length(results), length(bodies))))
    }
    unname(results)
  }
}
