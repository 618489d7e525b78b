# Loopback only: a proxy set in the environment must not see these requests.
Sys.setenv(no_proxy = "127.0.0.1,localhost", NO_PROXY = "127.0.0.1,localhost")
options(timeout = 20)

valve_src <- function() {
  src <- Sys.getenv("VALVE_SRC")
  if (!nzchar(src)) skip("VALVE_SRC is not set (the meson test binding-r sets it)")
  src
}

hello_api <- function() file.path(valve_src(), "examples", "hello", "plumber.R")

backend_cmd <- function() {
  backend <- Sys.getenv("VALVE_BACKEND")
  if (!nzchar(backend)) skip("VALVE_BACKEND is not set (the meson test binding-r sets it)")
  paste(shQuote(backend), "--port {port}")
}

http_get <- function(address, path) {
  con <- url(paste0("http://", address, path))
  on.exit(close(con))
  paste(readLines(con, warn = FALSE), collapse = "\n")
}

# PIDs of this R process's live child processes.
child_pids <- function() {
  pids <- integer()
  for (stat in Sys.glob("/proc/[0-9]*/stat")) {
    text <- tryCatch(readLines(stat, warn = FALSE), condition = function(e) "")  # gone meanwhile
    fields <- strsplit(sub("^.*\\) ", "", text), " ", fixed = TRUE)[[1]]
    # After "pid (comm) ": state, ppid. An unreaped zombie counts: valve must reap its workers.
    if (length(fields) >= 2 && fields[[2]] == as.character(Sys.getpid())) {
      pids <- c(pids, as.integer(sub(" .*", "", text)))
    }
  }
  pids
}

alive <- function(pid) dir.exists(file.path("/proc", pid))

wait_until <- function(condition, seconds = 10) {
  deadline <- Sys.time() + seconds
  while (!condition()) {
    if (Sys.time() > deadline) return(FALSE)
    Sys.sleep(0.05)
  }
  TRUE
}
