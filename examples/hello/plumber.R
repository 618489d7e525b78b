# A first plumber API to serve with valve.
#
#   valvectl -f examples/hello/plumber.R -n 4
#
# Plumber turns each annotated function below into an HTTP endpoint: `#* @get /path` names the
# method and path, function arguments come from the query string or the JSON body, and the return
# value is sent back as JSON. One R process answers one request at a time; valvectl runs several
# of these processes and spreads requests over them.

library(plumber)

#* Echo a message back.
#*   curl 'http://127.0.0.1:3000/echo?msg=hello'
#* @param msg the message to echo
#* @serializer unboxedJSON
#* @get /echo
function(msg = "") {
  list(msg = msg)
}

#* Sleep zzz seconds, then answer: the demo valve-rs uses to show requests running in parallel.
#* Ten of these at once take about 2 s with `-n 10`, and about 20 s with a single R process.
#*   curl 'http://127.0.0.1:3000/sleep?zzz=2'
#* @param zzz seconds to sleep
#* @serializer unboxedJSON
#* @get /sleep
function(zzz = 1, res) {
  seconds <- suppressWarnings(as.numeric(zzz))
  if (length(seconds) != 1 || is.na(seconds) || seconds < 0) {
    res$status <- 400
    return(list(error = "zzz must be a number of seconds, 0 or more"))
  }
  Sys.sleep(seconds)
  list(slept = seconds, pid = Sys.getpid())
}

# Plumber parses a JSON body before calling the endpoint and answers malformed JSON with a bare 500.
# This parser hands the body over as text instead, so /sum can answer 400 with a useful message.
register_parser("json_text", function(...) function(value, ...) rawToChar(value),
                fixed = c("application/json", "text/plain", "application/x-www-form-urlencoded"),
                verbose = FALSE)

#* Add up numbers sent as JSON, either a bare array or {"numbers": [...]}.
#*   curl -H 'Content-Type: application/json' -d '[1, 2, 3.5]' http://127.0.0.1:3000/sum
#* Anything that is not a list of numbers gets 400 and a message, not R's generic 500.
#* @parser json_text
#* @serializer unboxedJSON
#* @post /sum
function(req, res) {
  numbers <- tryCatch(jsonlite::fromJSON(req$postBody), error = function(e) NULL)
  if (is.list(numbers) && !is.null(numbers$numbers)) {
    numbers <- numbers$numbers
  }
  if (!is.numeric(numbers) || !is.null(dim(numbers)) || length(numbers) == 0 || anyNA(numbers)) {
    res$status <- 400
    return(list(error = 'send a JSON array of numbers, e.g. [1, 2, 3] or {"numbers": [1, 2, 3]}'))
  }
  list(sum = sum(numbers), count = length(numbers))
}
