# Routes that fail in R, for test_error_reports.py: an error in an endpoint, one on bad input, one
# in a filter, a warning that does not fail, and routes that answer.

#* @filter fragile
function(req) {
  if (identical(req$PATH_INFO, "/filtered")) stop("the filter tripped on ", req$PATH_INFO)
  plumber::forward()
}

#* @get /hello
function() list(ok = TRUE)

#* @get /pid
function() Sys.getpid()

#* @get /boom
function() {
  cat("preparing the model\n")
  stop("valve-test: the model exploded (code 7f3a)")
}

#* @param n how many items
#* @get /items
function(n) list(items = rep("x", n))

#* @get /warn
function() {
  warning("a harmless warning")
  list(ok = TRUE)
}

#* @get /filtered
function() list(ok = TRUE)
