# Plumber API for tests/integration/test_differential.py, which sends the same requests to it
# directly and through valve and compares the answers byte for byte. Each route shows one thing
# plumber 1.2.1 can answer: its serializers, statuses, redirects, cookies, empty and repeated
# headers, static files, filters, errors, path parameters and bodies of any size; /echo says what
# the app received, so the request side is compared too.

#* Answers itself (403) when asked to by X-Block; otherwise forwards.
#* @filter block
function(req, res) {
  if (!is.null(req$HTTP_X_BLOCK)) {
    res$status <- 403
    res$setHeader("X-Filter-Answered", "block")
    return(list(blocked = req$HTTP_X_BLOCK))
  }
  plumber::forward()
}

#* Forwards every request, marking its answer.
#* @filter mark
function(req, res) {
  res$setHeader("X-Filter-Seen", "mark")
  plumber::forward()
}

body_md5 <- function(body) {
  file <- tempfile()
  on.exit(unlink(file))
  writeBin(body, file)
  unname(tools::md5sum(file))
}

# A value as JSON, or its str() when jsonlite cannot write it.
describe <- function(value) {
  tryCatch(jsonlite::toJSON(value, auto_unbox = TRUE, force = TRUE, digits = NA),
           error = function(e) paste(utils::capture.output(utils::str(value)), collapse = "\n"))
}

echo <- function(req, res) {
  names <- sort(grep("^HTTP_", ls(req), value = TRUE))
  headers <- lapply(names, function(name) get(name, envir = req))
  names(headers) <- names
  body <- req$bodyRaw
  if (is.null(body)) body <- raw(0)
  res$setHeader("X-Echo", "1")
  list(method = req$REQUEST_METHOD, path = req$PATH_INFO, query = req$QUERY_STRING,
       content_type = if (is.null(req$CONTENT_TYPE)) NULL else req$CONTENT_TYPE,
       content_length = if (is.null(req$CONTENT_LENGTH)) NULL else req$CONTENT_LENGTH,
       headers = headers, body_length = length(body), body_md5 = body_md5(body),
       args_query = as.character(describe(req$argsQuery)),
       args_body = if (length(body) > 65536) "<not described>" else
         as.character(describe(req$argsBody)))
}

#* What the app received: method, path, query, HTTP_* variables, the body's length and MD5.
#* @serializer unboxedJSON
#* @get /echo
#* @head /echo
#* @post /echo
#* @put /echo
#* @delete /echo
#* @patch /echo
#* @options /echo
function(req, res) echo(req, res)

#* The same, under a path parameter (percent-encoded and UTF-8 paths).
#* @serializer unboxedJSON
#* @get /echo/<name>
#* @post /echo/<name>
function(req, res, name) {
  out <- echo(req, res)
  out$name <- name
  out
}

#* N bytes (0:255 repeated), N from the query.
#* @serializer octet
#* @get /bytes
#* @post /bytes
function(n = "0") {
  rep_len(as.raw(0:255), as.numeric(n))
}

#* Path parameters, typed.
#* @serializer unboxedJSON
#* @get /items/<id:int>
function(id) list(id = id, type = class(id))

#* @serializer unboxedJSON
#* @get /items/<id:int>/tags/<tag>
function(id, tag) list(id = id, tag = tag)

#* Any status the app sets, with a small JSON body (none for 1xx, 204 and 304: plumber drops it).
#* @serializer unboxedJSON
#* @get /status/<code:int>
#* @post /status/<code:int>
function(res, code) {
  res$status <- code
  list(status = code)
}

#* A redirect: the status from the path, Location from the query.
#* @serializer unboxedJSON
#* @get /redirect/<code:int>
#* @post /redirect/<code:int>
function(res, code, to = "/echo?redirected=1") {
  res$status <- code
  res$setHeader("Location", to)
  list(location = to)
}

#* Several Set-Cookie headers, through setCookie and setHeader, in an order to keep.
#* @serializer unboxedJSON
#* @get /cookies
function(res) {
  res$setCookie("first", "1")
  res$setCookie("second", "two words", path = "/", http = TRUE)
  res$setHeader("Set-Cookie", "third=3; Path=/cookies; SameSite=Lax")
  res$setCookie("fourth", "", secure = TRUE, same_site = "Strict")
  list(cookies = 4)
}

#* Empty and repeated header values, and a value with inner spaces.
#* @serializer unboxedJSON
#* @get /headers
function(res) {
  res$setHeader("X-Empty", "")
  res$setHeader("X-Repeat", "one")
  res$setHeader("X-Repeat", "two")
  res$setHeader("X-Repeat", "")
  res$setHeader("X-Spaces", "a  b   c")
  res$setHeader("X-Utf8", "caf\u00e9")
  res$setHeader("Cache-Control", "no-store")
  res$setHeader("Vary", "Accept")
  res$setHeader("Vary", "Accept-Encoding")
  list(ok = TRUE)
}

#* A hop-by-hop header set by the app (valve removes it), beside an ordinary one.
#* @serializer unboxedJSON
#* @get /hop
function(res) {
  res$setHeader("Connection", "X-Private")
  res$setHeader("X-Private", "secret")
  res$setHeader("Keep-Alive", "timeout=5")
  res$setHeader("X-Public", "kept")
  list(ok = TRUE)
}

#* An error: plumber's own 500.
#* @get /error
#* @post /error
function() stop("boom: an error in the API")

#* A warning: the answer still comes.
#* @serializer unboxedJSON
#* @get /warning
function() {
  warning("careful: a warning in the API")
  list(warned = TRUE)
}

#* A 503 the app answers itself, with Retry-After.
#* @serializer unboxedJSON
#* @get /unavailable
function(res) {
  res$status <- 503
  res$setHeader("Retry-After", "7")
  list(error = "the app is busy")
}

# ---- serializers: each one plumber 1.2.1 ships that needs no package beyond its own imports ----
# (yaml needs yaml, csv and tsv readr, htmlwidget htmlwidgets, feather, parquet and geojson their packages: not
# installed, and their @serializer line fails the whole file. svg is left out because cairo's output
# differs from one R process to the next; pdf because it holds its creation time.)
sample_frame <- data.frame(x = c(1.5, 2, NA), y = c("a", "b,c", "d\"e"), stringsAsFactors = FALSE)

#* @serializer json
#* @get /ser/json
function() list(frame = sample_frame, text = "caf\u00e9", n = 1:3)

#* @serializer unboxedJSON
#* @get /ser/unboxed
function() list(one = 1, text = "\u00fcber", nested = list(a = TRUE, b = NULL))

#* @serializer html
#* @get /ser/html
function() "<!DOCTYPE html><html><body><p>caf\u00e9 &amp; cr\u00e8me</p></body></html>"

#* @serializer text
#* @get /ser/text
function() c("line one", "line two \u2713")

#* @serializer cat
#* @get /ser/cat
function() c("cat", "joins", "words")

#* @serializer print
#* @get /ser/print
function() sample_frame

#* @serializer format
#* @get /ser/format
function() list(a = 1, b = "two")

#* @serializer rds
#* @get /ser/rds
function() sample_frame

#* @serializer octet
#* @get /ser/octet
function() as.raw(c(0, 1, 13, 10, 255))

#* @serializer contentType list(type = "text/csv; charset=UTF-8")
#* @get /ser/csv
function() paste(utils::capture.output(utils::write.csv(sample_frame, row.names = FALSE)),
                 collapse = "\n")

#* @serializer contentType list(type = "application/x-custom")
#* @get /ser/custom
function() charToRaw("custom bytes\n")

#* @serializer png list(width = 60, height = 40)
#* @get /ser/png
function() {
  graphics::plot(1:3)
}

#* @serializer null
#* @get /ser/null
function(res) {
  res$setHeader("Content-Type", "text/plain")
  res$body <- "set by hand"
  res
}

#* A value the octet serializer refuses (not raw): plumber's 500.
#* @serializer octet
#* @get /ser/broken
function() "not raw"

#* Static files: /static/...
#* @assets ./assets /static
list()
