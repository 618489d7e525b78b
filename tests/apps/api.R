# Plumber API used by valve's integration tests. Each endpoint exercises one behaviour of the
# supervisor: which worker answered, what headers arrived, slow answers, crashes and bodies.

#* The worker's process id, so tests can tell workers apart.
#* @serializer unboxedJSON
#* @get /pid
function() {
  list(pid = Sys.getpid())
}

#* Every HTTP_* entry of the request as plumber sees it (HTTP_X_FORWARDED_FOR, HTTP_HOST, ...).
#* @serializer unboxedJSON
#* @get /headers
function(req) {
  names <- sort(grep("^HTTP_", ls(req), value = TRUE))
  values <- lapply(names, function(name) as.character(get(name, envir = req)))
  names(values) <- names
  list(headers = values, pid = Sys.getpid())
}

#* Sleeps zzz seconds, then answers (the seed's demo endpoint).
#* @serializer unboxedJSON
#* @get /sleep
function(zzz = "1") {
  Sys.sleep(as.numeric(zzz))
  list(slept = as.numeric(zzz), pid = Sys.getpid())
}

#* Ends the worker without answering, as a crash in the middle of a request would.
#* @get /crash
#* @post /crash
function() {
  quit(save = "no", status = 1)
}

#* Crashes the first time it is called for a marker path, answers on every later call.
#* @serializer unboxedJSON
#* @get /crash_once
function(marker) {
  if (!file.exists(marker)) {
    file.create(marker)
    quit(save = "no", status = 1)
  }
  list(result = "survived", pid = Sys.getpid())
}

#* The byte length of the request body, whatever its content type.
#* @serializer unboxedJSON
#* @post /upload
function(req) {
  list(length = length(req$bodyRaw), pid = Sys.getpid())
}

#* An answer the app itself gives as 503 (maintenance): an answer, not a failing worker.
#* @serializer unboxedJSON
#* @get /unavailable
function(res) {
  res$status <- 503
  list(error = "down for maintenance", pid = Sys.getpid())
}

#* Sets 101 on a plain request: httpuv sends a bare "101 Switching Protocols" head and no more,
#* which valve refuses as an answer (no WebSocket was asked for).
#* @get /switch
function(res) {
  res$status <- 101
  list()
}
