# A plumber API that also echoes WebSocket messages: plumber's router is the httpuv app, and
# httpuv calls its onWSOpen for each WebSocket.
#* @get /hello
function() list(msg = "hello")

#* @get /pid
function() list(pid = Sys.getpid())

#* @plumber
function(pr) {
  unlockBinding("onWSOpen", pr)
  pr$onWSOpen <- function(ws) {
    ws$onMessage(function(binary, message) {
      if (identical(message, "pid")) ws$send(as.character(Sys.getpid()))
      else if (identical(message, "close")) ws$close()
      else if (identical(message, "die")) quit(save = "no", status = 3)
      else ws$send(message)
    })
  }
  pr
}
