test_that("the library is loaded and lists its options", {
  expect_match(valve_version(), "^[0-9]+\\.[0-9]+\\.[0-9]+$")
  opts <- valve_options()
  expect_true(all(c("host", "port", "n-min", "n-max", "workers", "file", "check-unused",
                    "max-age", "cmd", "graceful-timeout") %in% names(opts)))
  expect_match(opts[["n-max"]], "default: 3")
})

test_that("invalid options are valve_errors with the library's message", {
  err <- expect_error(valve_start(allow_root = TRUE, hello_api(), n_min = 5, n_max = 2), class = "valve_error")
  expect_match(conditionMessage(err), "n-min")
  expect_identical(err$name, "VALVE_EINVALID")
  expect_identical(err$code, -10001L)
  expect_match(deparse(conditionCall(err))[[1]], "^valve_start\\(")

  expect_error(valve_start(allow_root = TRUE, hello_api(), n_max = 0), "n-max 0: must be at least 1",
               class = "valve_error")
  expect_error(valve_start(allow_root = TRUE, hello_api(), no_such_option = 1), "no-such-option 1: unknown option",
               class = "valve_error")
  expect_error(valve_start(allow_root = TRUE, hello_api(), check_unused = "soon"), "check-unused",
               class = "valve_error")
  expect_error(valve_start(allow_root = TRUE, hello_api(), port = 1:2), "port: expected a single",
               class = "valve_error")
  expect_error(valve_run(allow_root = TRUE, hello_api(), n_min = 5, n_max = 2), "n-min", class = "valve_error")
})

test_that("a missing API file is a valve_error naming the file", {
  missing <- file.path(tempdir(), "no-such-api.R")
  expect_error(valve_start(allow_root = TRUE, missing), "no such file", class = "valve_error")
  expect_error(valve_run(allow_root = TRUE, missing), "no-such-api.R", class = "valve_error")
})

test_that("a port in use is a valve_error from start-up", {
  first <- valve_start(allow_root = TRUE, cmd = backend_cmd(), port = 0)
  on.exit(valve_stop(first, 0))
  port <- sub(".*:", "", valve_address(first))
  err <- expect_error(valve_start(allow_root = TRUE, cmd = backend_cmd(), port = port), class = "valve_error")
  expect_identical(err$name, "EADDRINUSE")
})

test_that("a plumber API serves requests through valve_start(allow_root = TRUE, )", {
  before <- child_pids()
  server <- valve_start(allow_root = TRUE, hello_api(), port = 0, n_max = 2)
  expect_s3_class(server, "valve_server")
  address <- valve_address(server)
  expect_match(address, "^127\\.0\\.0\\.1:[0-9]+$")
  expect_false(endsWith(address, ":0"))
  expect_output(print(server), "running at http://127\\.0\\.0\\.1:[0-9]+, 1 worker")

  expect_identical(http_get(address, "/echo?msg=hi"), '{"msg":"hi"}')

  status <- valve_status(server)
  expect_identical(status$state, "running")
  expect_identical(status$address, address)
  expect_true("ready" %in% status$workers$state)
  expect_identical(status$config$file, hello_api())
  expect_equal(status$config$`n-max`, 2)
  pids <- status$workers$pid
  expect_true(all(pids %in% child_pids()))

  events <- valve_events(server)
  kinds <- vapply(events, `[[`, "", "event")
  expect_true(all(c("worker_launched", "worker_ready", "request_completed") %in% kinds))
  done <- events[[match("request_completed", kinds)]]
  expect_identical(done$target, "/echo?msg=hi")
  expect_identical(done$status, 200L)
  expect_identical(attr(events, "dropped"), 0)
  expect_length(valve_events(server), 0)  # drained

  expect_invisible(valve_stop(server))
  expect_identical(valve_status(server)$state, "stopped")
  expect_true(is.na(valve_address(server)) || is.character(valve_address(server)))
  expect_false(any(vapply(pids, alive, logical(1))))
  expect_setequal(child_pids(), before)
  kinds <- vapply(valve_events(server), `[[`, "", "event")
  expect_true("worker_exited" %in% kinds)
  valve_stop(server)  # stopping a stopped server is harmless
})

test_that("positional arguments follow valve-rs's order", {
  # filepath, host, port, n_min, n_max, workers, check_unused, max_age
  server <- valve_start(allow_root = TRUE, hello_api(), "127.0.0.1", 0, 2, 5, 4, 7, 99, cmd = backend_cmd())
  on.exit(valve_stop(server, 0))
  config <- valve_status(server)$config
  expect_identical(config$host, "127.0.0.1")
  expect_equal(config$port, 0)
  expect_equal(config$`n-min`, 2)
  expect_equal(config$`n-max`, 5)
  expect_equal(config$workers, 4)
  expect_equal(config$`check-unused`, 7)
  expect_equal(config$`max-age`, 99)
})

test_that("start and stop five times with the native backend leave no process behind", {
  before <- child_pids()
  for (i in 1:5) {
    server <- valve_start(allow_root = TRUE, cmd = backend_cmd(), port = 0, n_min = 2, n_max = 2, events = 0)
    expect_identical(http_get(valve_address(server), "/hello"), "hello")
    pids <- valve_status(server)$workers$pid
    expect_length(pids, 2)
    expect_true(all(vapply(pids, alive, logical(1))))
    valve_stop(server, deadline = 1)
    expect_false(any(vapply(pids, alive, logical(1))))
    expect_setequal(child_pids(), before)
  }
  expect_error(valve_events(server), "keeps no events", class = "valve_error")
})

test_that("a server that is garbage-collected stops and ends its workers", {
  server <- valve_start(allow_root = TRUE, cmd = backend_cmd(), port = 0)
  pids <- valve_status(server)$workers$pid
  expect_true(all(vapply(pids, alive, logical(1))))
  rm(server)
  invisible(gc())
  expect_true(wait_until(function() !any(vapply(pids, alive, logical(1)))))
})

test_that("valve_run(allow_root = TRUE, ) blocks, serves, and stops gracefully on an interrupt", {
  dir <- tempfile("valve-run-")
  dir.create(dir)
  on.exit(unlink(dir, recursive = TRUE))
  script <- file.path(dir, "run.R")
  writeLines(c(
    sprintf(".libPaths(c(%s))", paste(deparse(.libPaths()), collapse = "")),
    "library(valve)",
    sprintf("writeLines(as.character(Sys.getpid()), %s)", deparse(file.path(dir, "pid"))),
    sprintf("r <- tryCatch(valve_run(allow_root = TRUE, cmd = %s, port = 0), interrupt = function(e) 'interrupted')",
            deparse(backend_cmd())),
    sprintf("writeLines(r, %s)", deparse(file.path(dir, "done")))
  ), script)
  log <- file.path(dir, "log")
  system2(file.path(R.home("bin"), "Rscript"), shQuote(script), stdout = log, stderr = log,
          wait = FALSE)
  served <- function() any(grepl("valve serving", readLines(log, warn = FALSE)))
  expect_true(wait_until(function() file.exists(log) && served(), 30))
  pid <- as.integer(readLines(file.path(dir, "pid")))
  address <- sub(".*http://", "", grep("valve serving", readLines(log), value = TRUE))
  expect_identical(http_get(address, "/hello"), "hello")
  Sys.sleep(0.3)  # valve_run(allow_root = TRUE, ) is polling by now: not finished on its own
  expect_false(file.exists(file.path(dir, "done")))

  tools::pskill(pid, tools::SIGINT)
  expect_true(wait_until(function() file.exists(file.path(dir, "done")), 30))
  expect_identical(readLines(file.path(dir, "done")), "interrupted")
  expect_true(any(grepl("stopped", readLines(log))))
  expect_error(suppressWarnings(http_get(address, "/hello")))  # nothing listens any more
})

test_that("clients that hang up mid-response do not bring R down (SIGPIPE on valve's thread)", {
  # R's own SIGPIPE handler raises an R error; run on valve's loop thread it would abort R. The
  # package keeps SIGPIPE blocked on that thread, so a write to a closed client fails with EPIPE.
  server <- valve_start(allow_root = TRUE, cmd = backend_cmd(), port = 0, n_max = 3, timeout = 1, events = 0)
  on.exit(valve_stop(server, 0))
  address <- strsplit(valve_address(server), ":", fixed = TRUE)[[1]]
  for (i in 1:5) {
    con <- socketConnection(address[[1]], as.integer(address[[2]]), blocking = TRUE, open = "r+b")
    writeLines("GET /bytes?n=5000000 HTTP/1.1\r\nHost: valve\r\n\r", con, sep = "\n")
    close(con)  # before any of the answer arrives: valve gets EPIPE on one of its next writes
    Sys.sleep(0.1)
  }
  expect_identical(http_get(valve_address(server), "/hello"), "hello")
})

test_that("valve_reload() replaces every worker and valve_scale() resizes the pool", {
  before_children <- child_pids()
  server <- valve_start(allow_root = TRUE, cmd = backend_cmd(), port = 0, n_min = 2, n_max = 4)
  on.exit(valve_stop(server, 0))
  ready_pids <- function() {
    workers <- valve_status(server)$workers
    if (length(workers)) workers$pid[workers$state == "ready"] else integer()
  }
  expect_true(wait_until(function() length(ready_pids()) == 2))
  before <- ready_pids()
  expect_equal(valve_status(server)$generation, 1)

  expect_invisible(valve_reload(server))
  status <- valve_status(server)
  expect_equal(status$generation, 2)
  expect_identical(status$reload$state, "done")
  # Every worker is new, of generation 2; the old ones drain and go.
  expect_true(wait_until(function() {
    workers <- valve_status(server)$workers
    NROW(workers) == 2 && !any(workers$pid %in% before) && all(workers$generation == 2)
  }))
  expect_false(any(vapply(before, alive, logical(1))))
  expect_identical(http_get(valve_address(server), "/hello"), "hello")
  reloads <- Filter(function(e) identical(e$event, "reload"), valve_events(server))
  expect_length(reloads, 1)
  expect_true(reloads[[1]]$ok)
  expect_equal(reloads[[1]]$generation, 2)

  expect_invisible(valve_scale(server, 3, 3))
  expect_true(wait_until(function() length(ready_pids()) == 3))
  config <- valve_status(server)$config
  expect_equal(config$`n-min`, 3)
  expect_equal(config$`n-max`, 3)

  err <- expect_error(valve_scale(server, 3, 2), class = "valve_error")
  expect_identical(conditionMessage(err), "n-min 3: must be at most n-max (2)")
  expect_identical(err$name, "VALVE_EINVALID")
  expect_match(deparse(conditionCall(err))[[1]], "^valve_scale\\(")
  for (bad in list(-1, 1.5, NA, "2", c(1, 2), 2^32)) {
    expect_error(valve_scale(server, bad, 4), "n-min: expected a single whole number",
                 class = "valve_error")
    expect_error(valve_scale(server, 1, bad), "n-max: expected a single whole number",
                 class = "valve_error")
  }
  expect_equal(valve_status(server)$config$`n-min`, 3)  # unchanged by the failures
  expect_error(valve_reload(list()), "valve_start")

  valve_stop(server, 1)
  err <- expect_error(valve_reload(server), class = "valve_error")
  expect_identical(err$name, "VALVE_ESTATE")
  err <- expect_error(valve_scale(server, 1, 1), class = "valve_error")
  expect_identical(err$name, "VALVE_ESTATE")
  expect_setequal(child_pids(), before_children)
})
