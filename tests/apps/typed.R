# A plumber API with typed parameters, for valve's request checks (test_typed.py, test_openapi.cpp:
# typed.openapi.json is its spec as plumber 1.2.1 writes it). Each endpoint echoes what R got, so
# a differential test can compare valve's answers with plumber's; /calls counts what reached R.

calls <- 0L
count <- function() calls <<- calls + 1L

#* Query parameters of each type plumber knows; n is required.
#* @param n:int* a count
#* @param x:dbl a measure
#* @param flag:bool a switch
#* @param label:chr a name
#* @param ids:[int] several ids (repeat the key)
#* @serializer unboxedJSON
#* @get /search
function(n, x = 0, flag = FALSE, label = "", ids = NULL) {
  count()
  list(n = n, x = x, flag = flag, label = label, ids = as.list(ids),
       n_int = as.integer(n), x_num = as.numeric(x), flag_lgl = as.logical(flag))
}

#* A typed path parameter.
#* @param id:int
#* @serializer unboxedJSON
#* @get /items/<id:int>
function(id) {
  count()
  list(id = id, class = class(id))
}

#* A static route beside the typed one.
#* @serializer unboxedJSON
#* @get /items/latest
function() {
  count()
  list(id = "latest")
}

#* A JSON body (or a form): wt and hp numbers, am a boolean, tags strings.
#* @param wt:numeric* weight
#* @param hp:int* horsepower
#* @param am:bool
#* @param tags:[chr]
#* @serializer unboxedJSON
#* @post /fit
function(wt, hp, am = FALSE, tags = NULL) {
  count()
  list(wt = wt, hp = hp, am = am, tags = as.list(tags), sum = as.numeric(wt) + as.numeric(hp))
}

#* No declared types: nothing is checked but required arguments.
#* @serializer unboxedJSON
#* @get /plain
function(anything = "x") {
  count()
  list(anything = anything)
}

#* How many requests reached R in this worker.
#* @serializer unboxedJSON
#* @get /calls
function() list(calls = calls, pid = Sys.getpid())
