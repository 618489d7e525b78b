# A plumber API for bench/soak (and tests/integration/test_soak.py): mixed traffic, each answer
# checkable by the client that asked.

#* A quick answer: the message back.
#* @serializer unboxedJSON
#* @get /fast
function(msg = "") {
  list(msg = msg, pid = Sys.getpid())
}

#* A slow answer: sleeps s seconds (a model that takes its time).
#* @serializer unboxedJSON
#* @get /slow
function(s = "0.2") {
  Sys.sleep(as.numeric(s))
  list(slept = as.numeric(s), pid = Sys.getpid())
}

#* The app's own failure: an R error, which plumber answers with 500.
#* @get /error
function() {
  stop("the model failed")
}

#* A POST body, counted: its length and the sum of its bytes, so the client can check that every
#* byte arrived.
#* @serializer unboxedJSON
#* @post /upload
function(req) {
  body <- req$bodyRaw
  list(bytes = length(body), sum = sum(as.integer(body)), pid = Sys.getpid())
}

#* A larger answer: kb kilobytes of text, in one piece.
#* @serializer text
#* @get /big
function(kb = "32") {
  strrep("0123456789abcdef", as.integer(kb) * 64L)
}
