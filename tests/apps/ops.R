# Plumber API for valve's operations tests: health checks, recycling, reload and the admin
# interface. Files in the directory named by VALVE_TEST_DIR steer it:
#   no-start     the API refuses to load (a reload or replacement that cannot start)
#   sick-<pid>   GET /health answers 503 for that worker
test_dir <- Sys.getenv("VALVE_TEST_DIR", tempdir())
if (file.exists(file.path(test_dir, "no-start"))) stop("no-start is set: refusing to load")

# A reload test rewrites this line.
VERSION <- "v1"
hoard <- list()

#* Which worker answered, and the API's version.
#* @serializer unboxedJSON
#* @get /hello
function() {
  list(pid = Sys.getpid(), version = VERSION)
}

#* 200 while healthy; 503 once sick-<pid> exists.
#* @serializer unboxedJSON
#* @get /health
function(res) {
  if (file.exists(file.path(test_dir, paste0("sick-", Sys.getpid())))) {
    res$status <- 503
    return(list(healthy = FALSE))
  }
  list(healthy = TRUE)
}

#* Keeps mb megabytes of memory, touched so it is resident.
#* @serializer unboxedJSON
#* @get /grow
function(mb = "100") {
  hoard[[length(hoard) + 1]] <<- rep(1.5, as.numeric(mb) * 1024 * 1024 / 8)
  list(pid = Sys.getpid(), held_mb = length(hoard) * as.numeric(mb))
}

#* The app's own 500: an R error is an answer, not a failing worker.
#* @get /error
function() {
  stop("the model failed")
}

#* A 503 the app answers itself (maintenance): an answer like any other.
#* @serializer unboxedJSON
#* @get /unavailable
function(res) {
  res$status <- 503
  list(pid = Sys.getpid())
}

#* An answer that cannot be parsed: httpuv adds its Content-Length beside this Transfer-Encoding,
#* and a message with both is refused (RFC 9112 6.3): the worker's fault, as valve counts it.
#* @serializer text
#* @get /malformed
function(res) {
  res$setHeader("Transfer-Encoding", "chunked")
  "not chunked"
}

#* Sleeps s seconds.
#* @serializer unboxedJSON
#* @get /sleep
#* @post /sleep
function(s = "1") {
  Sys.sleep(as.numeric(s))
  list(pid = Sys.getpid())
}

#* The app's own /metrics: valve's are on the admin listener only.
#* @serializer text
#* @get /metrics
function() {
  "app metrics\n"
}
