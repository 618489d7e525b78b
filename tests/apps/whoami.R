# Reports what a worker runs as: its user, and its environment. For the isolation tests.

#* @get /hello
#* @serializer unboxedJSON
function() list(ok = TRUE, pid = Sys.getpid())

#* Every variable name in the worker's environment, the values of those asked for (?names=A,B;
#* null when unset), and the user the worker runs as.
#* @get /env
#* @serializer unboxedJSON
function(names = "") {
  wanted <- strsplit(names, ",", fixed = TRUE)[[1]]
  values <- lapply(wanted, function(n) {
    v <- Sys.getenv(n, unset = NA)
    if (is.na(v)) NULL else v
  })
  names(values) <- wanted
  list(user = Sys.info()[["effective_user"]], pid = Sys.getpid(),
       names = I(names(Sys.getenv())), values = values)
}
