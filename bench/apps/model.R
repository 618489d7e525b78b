# A plumber API that holds a 200 MB "model" (25 million doubles), for bench/preload's memory figure.
model <- runif(25e6)

#* One prediction: a mean over a slice of the model.
#* @serializer unboxedJSON
#* @get /predict
function(i = "1") {
  start <- (as.integer(i) %% 1000L) * 1000L + 1L
  list(pid = Sys.getpid(), value = mean(model[start:(start + 999L)]))
}
