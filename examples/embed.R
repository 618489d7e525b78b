#!/usr/bin/env Rscript
# Embed valve in an R session: start a pool of plumber workers in the background, send one
# request, stop.
#
#   VALVE_R_LIB=build/r-lib Rscript examples/embed.R
#
# Without VALVE_R_LIB, the valve package comes from R's usual library paths.

lib <- Sys.getenv("VALVE_R_LIB")
if (nzchar(lib)) .libPaths(c(lib, .libPaths()))
library(valve)

args <- commandArgs(trailingOnly = FALSE)
here <- dirname(normalizePath(sub("^--file=", "", grep("^--file=", args, value = TRUE)[1])))
api <- file.path(here, "hello", "plumber.R")

# port = 0 picks a free port; valve_start() returns once the first worker is ready.
# valve will not start workers as root unless told to (or given a user = to run them as).
server <- valve_start(api, port = 0, n_max = 2, log_level = "warn",
                      allow_root = Sys.info()[["effective_user"]] == "root")
url <- paste0("http://", valve_address(server))
cat("valve", valve_version(), "serving", api, "on", url, "\n")

con <- url(paste0(url, "/echo?msg=hello%20from%20R"))
answer <- tryCatch(readLines(con, warn = FALSE), finally = close(con))
cat("GET /echo ->", answer, "\n")
workers <- valve_status(server)$workers
cat(nrow(workers), "worker(s):", paste("pid", workers$pid, workers$state, collapse = ", "), "\n")

# Let in-flight requests finish for up to 5 s, end the workers, and wait for all of it.
valve_stop(server, deadline = 5)
quit(status = if (identical(answer, '{"msg":"hello from R"}')) 0 else 1)
