# Thin wrappers over libvalve's C API (src/valve.c): options go in as strings by their valvectl
# names, errors come back as conditions of class "valve_error".

valve_abort <- function(code, name, message, call = user_call()) {
  stop(structure(
    class = c("valve_error", "error", "condition"),
    list(message = message, call = call, code = code, name = name)
  ))
}

# The call the user made: the outermost frame running one of this package's functions.
user_call <- function() {
  ns <- environment(user_call)
  for (i in seq_len(sys.nframe())) {
    if (identical(environment(sys.function(i)), ns)) return(sys.call(i))
  }
  NULL
}

# One option value as valve_config_set() parses it.
option_string <- function(key, value) {
  if (is.character(value) && length(value) == 1 && !is.na(value)) return(value)
  if (is.logical(value) && length(value) == 1 && !is.na(value)) return(if (value) "true" else "false")
  if (is.numeric(value) && length(value) == 1 && !is.na(value)) {
    return(format(value, scientific = FALSE, trim = TRUE, digits = 15))
  }
  valve_abort(-10001L, "VALVE_EINVALID",
              sprintf("%s: expected a single string, number or TRUE/FALSE", key))
}

# Named options (R names, `_` for `-`; NULL leaves the default) to the keys and values of C_new.
new_server <- function(options, events) {
  options <- options[!vapply(options, is.null, logical(1))]
  keys <- gsub("_", "-", names(options), fixed = TRUE)
  if (length(options) && (is.null(names(options)) || any(keys == ""))) {
    valve_abort(-10001L, "VALVE_EINVALID", "every option must be named")
  }
  # env takes a character vector, each element in turn; named elements as NAME=VALUE.
  if ("env" %in% keys) {
    env <- options[[which(keys == "env")[[1]]]]
    if (!is.character(env) || anyNA(env)) {
      valve_abort(-10001L, "VALVE_EINVALID", "env: expected a character vector")
    }
    if (!is.null(names(env))) env <- ifelse(names(env) == "", env, paste0(names(env), "=", env))
    env <- as.list(unname(env))
    names(env) <- rep("env", length(env))
    options <- c(options[keys != "env"], env)
    keys <- c(keys[keys != "env"], rep("env", length(env)))
  }
  values <- vapply(seq_along(options), function(i) option_string(keys[[i]], options[[i]]),
                   character(1))
  .Call(C_new, as.character(keys), values, as.integer(events))
}

server_options <- function(filepath, host, port, n_min, n_max, workers, check_unused, max_age,
                           ...) {
  c(list(file = filepath, host = host, port = port, n_min = n_min, n_max = n_max,
         workers = workers, check_unused = check_unused, max_age = max_age), list(...))
}

# Serve a plumber API with a pool of R workers, blocking until interrupted.
valve_run <- function(filepath = "plumber.R", host = "127.0.0.1", port = 3000, n_min = 1,
                      n_max = 3, workers = 0, check_unused = 10, max_age = 300, ...) {
  opts <- server_options(filepath, host, port, n_min, n_max, workers, check_unused, max_age, ...)
  ptr <- new_server(opts, events = 0L)
  # valve's loop runs on its own thread so that R stays interruptible; an interrupt (or any
  # error) stops the pool gracefully before valve_run() returns.
  stopped <- FALSE
  on.exit(if (!stopped) {
    .Call(C_stop, ptr, -1)
    try(.Call(C_wait, ptr), silent = TRUE)  # a failed start has raised its error already
  })
  .Call(C_start, ptr)
  message("valve serving ", opts$cmd %||% opts$file, " at http://", .Call(C_address, ptr))
  while (!grepl('"state":"stopped"', .Call(C_status, ptr), fixed = TRUE)) Sys.sleep(0.1)
  stopped <- TRUE
  .Call(C_wait, ptr)
  invisible(NULL)
}

# Start a pool in the background and return a handle to it.
valve_start <- function(filepath = "plumber.R", host = "127.0.0.1", port = 3000, n_min = 1,
                        n_max = 3, workers = 0, check_unused = 10, max_age = 300, ...,
                        events = 1000L) {
  opts <- server_options(filepath, host, port, n_min, n_max, workers, check_unused, max_age, ...)
  ptr <- new_server(opts, events)
  .Call(C_start, ptr)
  structure(list(ptr = ptr, serves = opts$cmd %||% opts$file), class = "valve_server")
}

check_server <- function(server) {
  if (!inherits(server, "valve_server")) stop("`server` must come from valve_start()", call. = FALSE)
  server$ptr
}

# Stop a server: let in-flight requests finish for up to `deadline` seconds (NULL: the
# configured graceful-timeout), end the workers, and wait until all of it is done.
valve_stop <- function(server, deadline = NULL) {
  ptr <- check_server(server)
  .Call(C_stop, ptr, if (is.null(deadline)) -1 else as.numeric(deadline))
  .Call(C_wait, ptr)
  invisible(server)
}

# Reload without dropping a request: a new generation of workers (re-reading the API file) takes
# over once it is ready and the old one drains. Returns once the new generation serves.
valve_reload <- function(server) {
  .Call(C_reload, check_server(server))
  invisible(server)
}

# One worker count for valve_scale(): a whole number of 0 or more (a C unsigned).
worker_count <- function(key, value) {
  if (!is.numeric(value) || length(value) != 1 || is.na(value) || value < 0 ||
      value > 4294967295 || value != trunc(value)) {
    valve_abort(-10001L, "VALVE_EINVALID",
                sprintf("%s: expected a single whole number, 0 or more", key))
  }
  as.numeric(value)
}

# Set the running pool's n-min and n-max: workers above n_max drain and stop, workers up to n_min
# are launched.
valve_scale <- function(server, n_min, n_max) {
  ptr <- check_server(server)
  .Call(C_scale, ptr, worker_count("n-min", n_min), worker_count("n-max", n_max))
  invisible(server)
}

valve_status <- function(server) {
  jsonlite::fromJSON(.Call(C_status, check_server(server)))
}

valve_address <- function(server) {
  .Call(C_address, check_server(server))
}

valve_events <- function(server) {
  json <- .Call(C_events, check_server(server))
  structure(lapply(json, jsonlite::fromJSON), dropped = attr(json, "dropped"))
}

valve_options <- function() {
  .Call(C_options)
}

valve_version <- function() {
  .Call(C_version)
}

format.valve_server <- function(x, ...) {
  status <- valve_status(x)
  workers <- if (length(status$workers)) NROW(status$workers) else 0L
  address <- status$address %||% ""
  sprintf("<valve_server %s: %s%s, %d worker%s>", x$serves, status$state,
          if (nzchar(address)) paste0(" at http://", address) else "", workers,
          if (workers == 1) "" else "s")
}

print.valve_server <- function(x, ...) {
  cat(format(x, ...), "\n", sep = "")
  invisible(x)
}

`%||%` <- function(a, b) if (is.null(a)) b else a
