# valve_batch_route(): the handler valve's batches reach, called here as plumber calls it.

batch_call <- function(handler, body) {
  res <- new.env()
  res$status <- 200
  out <- handler(list(postBody = body), res)
  list(status = res$status, body = out)
}

test_that("valve_batch_route() answers a JSON array with one result per body, in order", {
  double_x <- function(body) list(y = body$x * 2)
  got <- batch_call(valve_batch_route(double_x), '[{"x": 1}, {"x": 5}, {"x": -2}]')
  expect_equal(got$status, 200)
  expect_equal(got$body, list(list(y = 2), list(y = 10), list(y = -4)))
  # Serialised as plumber's unboxedJSON does, each element is the single route's answer.
  expect_equal(as.character(jsonlite::toJSON(got$body, auto_unbox = TRUE)),
               '[{"y":2},{"y":10},{"y":-4}]')
})

test_that("valve_batch_route(vectorised = TRUE) calls the function once for the whole batch", {
  calls <- 0
  sum_all <- function(bodies) {
    calls <<- calls + 1
    xs <- vapply(bodies, function(b) b$x, numeric(1))
    lapply(xs * 10, function(v) list(y = v))
  }
  got <- batch_call(valve_batch_route(sum_all, vectorised = TRUE), '[{"x": 1}, {"x": 2}]')
  expect_equal(calls, 1)
  expect_equal(got$body, list(list(y = 10), list(y = 20)))
})

test_that("valve_batch_route() answers 500 when a body fails, so valve sends each alone", {
  picky <- function(body) if (is.null(body$x)) stop("x is missing") else list(y = body$x)
  got <- batch_call(valve_batch_route(picky), '[{"x": 1}, {"z": 2}]')
  expect_equal(got$status, 500)
  expect_match(got$body$error, "x is missing")
  # Not an array, or results of the wrong length: 500 too.
  expect_equal(batch_call(valve_batch_route(picky), '{"x": 1}')$status, 500)
  expect_equal(batch_call(valve_batch_route(picky), "not json")$status, 500)
  short <- valve_batch_route(function(bodies) list(1), vectorised = TRUE)
  expect_equal(batch_call(short, "[1, 2]")$status, 500)
  expect_error(valve_batch_route(42), "must be a function")
})
