# Every parameter type plumber 1.2.1 knows, for test_typed_differential.py: query, path and body
# parameters of each type and alias, with defaults and without, endpoints with their own @parser
# and @serializer, and overlapping dynamic routes. Each endpoint does with its typed arguments what
# careful R code does: converts them as R does (as.integer, as.numeric, as.logical) and fails (a
# 500) when R cannot; then it echoes what it got, so that two answers can be compared.

converters <- list(int = as.integer, dbl = as.numeric, bool = as.logical, chr = as.character)

# x read as type, or an error when R cannot read it (NA, nothing, or an error of its own).
take <- function(x, type) {
  if (length(x) == 0) stop("no value")
  v <- tryCatch(converters[[type]](x), warning = function(w) NA, error = function(e) NA)
  if (anyNA(v)) stop("not a ", type)
  v
}
# The same for an optional argument (NULL: not given).
maybe <- function(x, type) if (is.null(x)) NULL else take(x, type)
# What the endpoint got: each argument's class and value.
got <- function(...) {
  args <- list(...)
  args <- args[!vapply(args, is.null, logical(1))]
  lapply(args, function(x) list(class = class(x), value = x))
}

#* Query (or body) parameters of every type and alias, all optional.
#* @param a:bool
#* @param b:logical
#* @param c:boolean
#* @param i:int
#* @param j:integer
#* @param d:dbl
#* @param e:double
#* @param f:numeric
#* @param g:number
#* @param h:float
#* @param s:chr
#* @param t:character
#* @param u:string
#* @param v:str
#* @param ai:[int]
#* @param ad:[dbl]
#* @param ab:[bool]
#* @param as:[chr]
#* @get /q
#* @post /q
function(a = NULL, b = NULL, c = NULL, i = NULL, j = NULL, d = NULL, e = NULL, f = NULL,
         g = NULL, h = NULL, s = NULL, t = NULL, u = NULL, v = NULL, ai = NULL, ad = NULL,
         ab = NULL, as = NULL) {
  got(a = maybe(a, "bool"), b = maybe(b, "bool"), c = maybe(c, "bool"), i = maybe(i, "int"),
      j = maybe(j, "int"), d = maybe(d, "dbl"), e = maybe(e, "dbl"), f = maybe(f, "dbl"),
      g = maybe(g, "dbl"), h = maybe(h, "dbl"), s = maybe(s, "chr"), t = maybe(t, "chr"),
      u = maybe(u, "chr"), v = maybe(v, "chr"), ai = maybe(ai, "int"), ad = maybe(ad, "dbl"),
      ab = maybe(ab, "bool"), as = maybe(as, "chr"))
}

#* Required parameters (n by its *, m for having no default) and types from defaults alone.
#* @param n:int* a count
#* @param m:dbl
#* @serializer unboxedJSON
#* @get /req
#* @post /req
function(n, m, k = 5, l = 2L, flag = TRUE, label = "x") {
  got(n = take(n, "int"), m = take(m, "dbl"), k = take(k, "dbl"), l = take(l, "int"),
      flag = take(flag, "bool"), label = take(label, "chr"))
}

#* A JSON body: numbers, booleans, arrays, an object and a data frame.
#* @param wt:dbl*
#* @param hp:int*
#* @param am:bool
#* @param tags:[chr]
#* @param ids:[int]
#* @param obj:object
#* @param df:df
#* @post /body
function(wt, hp, am = NULL, tags = NULL, ids = NULL, obj = NULL, df = NULL) {
  got(wt = take(wt, "dbl"), hp = take(hp, "int"), am = maybe(am, "bool"),
      tags = maybe(tags, "chr"), ids = maybe(ids, "int"), obj = obj, df = df)
}

#* A file upload (multipart) beside a typed field.
#* @param upload:file
#* @param n:int
#* @parser multi
#* @post /upload
function(upload = NULL, n = NULL) {
  got(n = maybe(n, "int"), files = if (is.null(upload)) NULL else names(upload))
}

#* @get /p/int/<id:int>
function(id) got(id = take(id, "int"))

#* @get /p/integer/<id:integer>
function(id) got(id = take(id, "int"))

#* @get /p/dbl/<x:dbl>
function(x) got(x = take(x, "dbl"))

#* @get /p/double/<x:double>
function(x) got(x = take(x, "dbl"))

#* @get /p/numeric/<x:numeric>
function(x) got(x = take(x, "dbl"))

#* @get /p/bool/<b:bool>
function(b) got(b = take(b, "bool"))

#* @get /p/logical/<b:logical>
function(b) got(b = take(b, "bool"))

#* @get /p/chr/<s:chr>
function(s) got(s = take(s, "chr"))

#* @get /p/any/<s>
function(s) got(s = s)

#* @get /p/ints/<ids:[int]>
function(ids) got(ids = take(ids, "int"))

#* A path parameter typed by @param only: plumber's route takes any text for it.
#* @param id:int
#* @get /p/annot/<id>
function(id) got(id = take(id, "int"))

#* Two typed path parameters and a query parameter.
#* @param q:bool
#* @get /p/two/<a:int>/<b:dbl>
function(a, b, q = NULL) got(a = take(a, "int"), b = take(b, "dbl"), q = maybe(q, "bool"))

# Overlapping dynamic routes, in both orders.

#* @get /o1/<id:int>
function(id) got(route = "o1 int", id = take(id, "int"))

#* @get /o1/<name>
function(name) got(route = "o1 name", name = name)

#* @get /o2/<name>
function(name) got(route = "o2 name", name = name)

#* @get /o2/<id:int>
function(id) got(route = "o2 int", id = take(id, "int"))

#* @get /o3/<id:int>
function(id) got(route = "o3 int", id = take(id, "int"))

#* @post /o3/<name>
function(name) got(route = "o3 name", name = name)

#* @get /o4/<id:int>
function(id) got(route = "o4 int", id = take(id, "int"))

#* @get /o4/<id>
function(id) got(route = "o4 any", id = id)

#* @get /o5/<x:dbl>
function(x) got(route = "o5 dbl", x = take(x, "dbl"))

#* @get /o5/<id:int>
function(id) got(route = "o5 int", id = take(id, "int"))

#* @get /o5/latest
function() got(route = "o5 latest")

#* @get /o6/<b:bool>
function(b) got(route = "o6 bool", b = take(b, "bool"))

#* @get /o6/<id:int>/<x:dbl>
function(id, x) got(route = "o6 int dbl", id = take(id, "int"), x = take(x, "dbl"))

#* @get /o6/<name>/<x:int>
function(name, x) got(route = "o6 name int", name = name, x = take(x, "int"))

# Endpoints with their own parser (and serializer): n comes from the query, or from the body
# where the parser gives named values.

#* @param n:int
#* @parser text
#* @serializer text
#* @post /own/text
function(req, n = NULL) paste("n:", maybe(n, "int"), "body:", class(req$body))

#* @param n:int
#* @parser json
#* @post /own/json
function(req, n = NULL) got(n = maybe(n, "int"), body = class(req$body))

#* @param n:int
#* @parser form
#* @post /own/form
function(req, n = NULL) got(n = maybe(n, "int"), body = class(req$body))

#* @param n:int
#* @parser octet
#* @serializer html
#* @post /own/octet
function(req, n = NULL) paste("n:", maybe(n, "int"), "bytes:", length(req$body))

#* @param n:int
#* @parser multi
#* @post /own/multi
function(req, n = NULL) got(n = maybe(n, "int"), body = class(req$body))

#* @param n:int
#* @parser rds
#* @post /own/rds
function(req, n = NULL) got(n = maybe(n, "int"), body = class(req$body))

#* @param n:int
#* @parser csv
#* @serializer csv
#* @post /own/csv
function(req, n = NULL) data.frame(n = if (is.null(n)) NA else maybe(n, "int"), rows = NROW(req$body))

#* @param n:int
#* @parser none
#* @post /own/none
function(req, n = NULL) got(n = maybe(n, "int"), body = class(req$body))
