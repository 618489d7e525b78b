# Makes a batch of HTTP requests with httr2 and prints what httr2 saw, for test_differential.py:
# one R process for every request, so R starts once.
#   Rscript httr2_batch.R REQUESTS.json RESULTS.json
# REQUESTS.json: [{"id", "url", "method", "headers": [[name, value], ...], "body": base64 or null}]
# RESULTS.json: [{"id", "status", "headers": [[name, value], ...], "body": base64}] or
#   [{"id", "error": message}]
suppressPackageStartupMessages(library(httr2))

args <- commandArgs(trailingOnly = TRUE)
requests <- jsonlite::fromJSON(args[[1]], simplifyVector = FALSE)

perform <- function(spec) {
  req <- request(spec$url)
  req <- req_method(req, spec$method)
  # The answer as it came: no error for 4xx/5xx, no retry (nor Retry-After's sleep), no redirect.
  req <- req_error(req, is_error = function(resp) FALSE)
  req <- req_retry(req, max_tries = 1, is_transient = function(resp) FALSE)
  # A connection each: plumber's stray body after a HEAD answer would spoil the next request.
  req <- req_options(req, followlocation = FALSE, forbid_reuse = TRUE)
  headers <- list()
  for (pair in spec$headers) headers[[pair[[1]]]] <- pair[[2]]
  if (length(headers)) req <- do.call(req_headers, c(list(req), headers))
  if (!is.null(spec$body)) {
    type <- if (is.null(headers[["Content-Type"]])) "" else headers[["Content-Type"]]
    req <- req_body_raw(req, jsonlite::base64_dec(spec$body), type = type)
  }
  resp <- req_perform(req)
  list(id = spec$id, status = resp$status_code,
       headers = unname(Map(function(name, value) list(name, value), names(resp$headers),
                            unname(as.character(resp$headers)))),
       body = jsonlite::base64_enc(resp$body))
}

results <- lapply(requests, function(spec) {
  tryCatch(perform(spec), error = function(e) list(id = spec$id, error = conditionMessage(e)))
})
writeLines(jsonlite::toJSON(results, auto_unbox = TRUE, null = "null"), args[[2]], useBytes = TRUE)
