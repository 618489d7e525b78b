# A plumber API with its docs turned off. Plumber then prints no "Running swagger Docs" line;
# valve-rs waits for that line and hangs, valve must see the worker ready by answering HTTP.

library(plumber) # for %>% and pr_set_docs() inside the @plumber block

#* @serializer unboxedJSON
#* @get /hello
function() {
  list(msg = "hello without docs", pid = Sys.getpid())
}

#* @plumber
function(pr) {
  pr %>% pr_set_docs(FALSE)
}
