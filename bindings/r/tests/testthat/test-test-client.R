# The test client serves examples/hello with real plumber workers, as a package's tests would.

test_that("local_valve() serves a plumber file on a free port until the test ends", {
  before <- child_pids()
  url <- NULL
  local({
    url <<- local_valve(hello_api())
    expect_s3_class(url, "valve_url")
    expect_match(url, "^http://127\\.0\\.0\\.1:[0-9]+$")
    expect_false(endsWith(url, ":0"))
    expect_output(print(url), "<valve_url http://127")
    resp <- httr2::req_perform(valve_request(url, "/echo", msg = "hi there"))
    expect_equal(httr2::resp_status(resp), 200)
    expect_equal(httr2::resp_body_json(resp), list(msg = "hi there"))
    server <- valve_server_of(url)
    expect_identical(valve_status(server)$state, "running")
    expect_true(all(valve_status(server)$workers$pid %in% child_pids()))
  })
  # The block ended: the server stopped and its workers are gone.
  expect_error(httr2::req_perform(valve_request(url, "/echo", msg = "x")))
  expect_true(wait_until(function() setequal(child_pids(), before), 10))
})

test_that("valve_request() returns error answers instead of raising them, and sends JSON", {
  url <- local_valve(hello_api())
  resp <- httr2::req_perform(valve_request(url, "/no-such-route"))
  expect_equal(httr2::resp_status(resp), 404)
  resp <- httr2::req_perform(valve_request(url, "/echo", method = "DELETE"))
  expect_equal(httr2::resp_status(resp), 405)
  resp <- httr2::req_perform(valve_request(url, "/sum", json = list(numbers = c(1, 2.5))))
  expect_equal(httr2::resp_status(resp), 200)
  expect_equal(httr2::resp_body_json(resp), list(sum = 3.5, count = 2))
  resp <- httr2::req_perform(valve_request(url, "/sum", json = "not numbers"))
  expect_equal(httr2::resp_status(resp), 400)
})

test_that("valve_test() serves around a function and stops after it, even when it fails", {
  before <- child_pids()
  got <- valve_test(hello_api(), function(url) {
    httr2::resp_body_json(httr2::req_perform(valve_request(url, "/echo", msg = "a")))
  })
  expect_equal(got, list(msg = "a"))
  expect_error(valve_test(hello_api(), function(url) stop("the test failed")), "the test failed")
  expect_true(wait_until(function() setequal(child_pids(), before), 10))
  expect_error(valve_test(hello_api(), "not a function"), "must be a function")
  expect_error(valve_server_of("http://127.0.0.1:1"), "must come from local_valve")
})

test_that("a broken API file fails local_valve() with the worker's error", {
  api <- tempfile(fileext = ".R")
  writeLines(c("#* @get /x", "function() 1", "stop('broken on purpose')"), api)
  err <- expect_error(local_valve(api), class = "valve_error")
  expect_match(conditionMessage(err), "broken on purpose")
})
