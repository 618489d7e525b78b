# A test client: serve a plumber file with real workers for the length of a test, and build
# requests to it with httr2.

# Serves `filepath` on a free loopback port until `.local_envir` ends (by default the calling
# function or test_that() block), and returns the server's base URL, "http://127.0.0.1:PORT", with
# the valve_server in its "server" attribute, once n_min workers are ready (at most ready_timeout
# seconds). Options in `...` are valve_start()'s.
local_valve <- function(filepath = "plumber.R", ..., n_min = 1, n_max = 2, graceful_timeout = 5,
                        ready_timeout = 60, .local_envir = parent.frame()) {
  options <- list(...)
  # A test serves its own code as the user who runs it: when that is root, so are the workers,
  # which valve otherwise refuses without allow_root.
  if (is.null(options$allow_root) && identical(unname(Sys.info()[["effective_user"]]), "root")) {
    options$allow_root <- TRUE
  }
  # valve's info lines (a worker launched, ready, stopped) would fill a test's output.
  if (is.null(options$log_level)) options$log_level <- "warn"
  server <- do.call(valve_start, c(list(filepath = filepath, host = "127.0.0.1", port = 0,
                                        n_min = n_min, n_max = n_max,
                                        graceful_timeout = graceful_timeout),
                                   options, list(events = 0L)))
  withr::defer(valve_stop(server), envir = .local_envir)
  # valve_start() returns with one worker ready; a test that asked for more gets them all.
  deadline <- Sys.time() + ready_timeout
  while (sum(valve_status(server)$workers$state == "ready") < n_min) {
    if (Sys.time() > deadline) {
      stop(sprintf("local_valve(): %d of n_min = %d workers ready after %g s",
                   sum(valve_status(server)$workers$state == "ready"), n_min, ready_timeout),
           call. = FALSE)
    }
    Sys.sleep(0.05)
  }
  structure(paste0("http://", valve_address(server)), server = server, class = "valve_url")
}

# Serves `filepath` as local_valve() does while `code` runs, and stops it after, even on error.
# `code` is a function of the base URL; valve_test() returns what it returns.
valve_test <- function(filepath = "plumber.R", code, ...) {
  if (!is.function(code)) stop("`code` must be a function of the server's URL", call. = FALSE)
  url <- local_valve(filepath, ...)
  code(url)
}

# An httr2 request to `path` of a server from local_valve(): query parameters from `...`, a JSON
# body from `json` (sent with POST unless `method` says otherwise). An answer of any status is
# returned by httr2::req_perform() rather than signalled, so that a test can check a 4xx or 5xx.
valve_request <- function(url, path = "/", ..., json = NULL, method = NULL) {
  if (!requireNamespace("httr2", quietly = TRUE)) {
    stop("valve_request() needs the httr2 package", call. = FALSE)
  }
  req <- httr2::request(as.character(url))
  req <- httr2::req_url_path_append(req, path)
  query <- list(...)
  if (length(query)) req <- do.call(httr2::req_url_query, c(list(req), query))
  if (!is.null(json)) req <- httr2::req_body_json(req, json, auto_unbox = TRUE)
  if (!is.null(method)) req <- httr2::req_method(req, method)
  httr2::req_error(req, is_error = function(resp) FALSE)
}

# The valve_server behind a URL from local_valve(), for valve_status(), valve_reload() and so on.
valve_server_of <- function(url) {
  server <- attr(url, "server")
  if (!inherits(server, "valve_server")) {
    stop("`url` must come from local_valve()", call. = FALSE)
  }
  server
}

format.valve_url <- function(x, ...) as.character(unclass(structure(x, server = NULL)))

print.valve_url <- function(x, ...) {
  cat("<valve_url ", format(x), ">\n", sep = "")
  invisible(x)
}
