# Plumber API for valve's --preload tests. The file runs once, in the template; each worker is
# forked from it. Files in the directory named by VALVE_TEST_DIR steer it:
#   no-template   the API refuses to load in a template (VALVE_TEMPLATE is set): preloading fails
#   hook-fails    valve_post_fork() raises an error
# A reload test rewrites the VERSION line.
test_dir <- Sys.getenv("VALVE_TEST_DIR", tempdir())
if (nzchar(Sys.getenv("VALVE_TEMPLATE")) && file.exists(file.path(test_dir, "no-template")))
  stop("no-template is set: refusing to load in a template")

VERSION <- "v1"
loaded_in <- Sys.getpid()
# Drawn while loading: a forked worker must not repeat the template's random stream.
set.seed(42)
template_draw <- runif(1)
hook_pid <- NA_integer_
hook_calls <- 0L

# Runs in each forked worker before it serves: where a real API reopens its database connection.
valve_post_fork <- function() {
  if (file.exists(file.path(test_dir, "hook-fails"))) stop("hook-fails is set")
  hook_pid <<- Sys.getpid()
  hook_calls <<- hook_calls + 1L
}

#* Which process answered, where the file was loaded, and what the post-fork hook saw.
#* @serializer unboxedJSON
#* @get /hello
function() {
  list(pid = Sys.getpid(), loaded_in = loaded_in, hook_pid = hook_pid, hook_calls = hook_calls,
       version = VERSION, worker_id = Sys.getenv("VALVE_WORKER_ID"),
       template = Sys.getenv("VALVE_TEMPLATE"), tempdir = tempdir())
}

#* Writes a temporary file, as an API that saves an upload or renders a plot does.
#* @serializer unboxedJSON
#* @get /tempfile
function() {
  path <- tempfile(fileext = ".txt")
  writeLines(rep("scratch", 1000), path)
  list(pid = Sys.getpid(), path = path, tmpdir = Sys.getenv("TMPDIR"))
}

#* Random draws: each worker must have a seed of its own.
#* @serializer unboxedJSON
#* @get /random
function() {
  list(pid = Sys.getpid(), u = runif(3), s = sample.int(1000000L, 3L), template_draw = template_draw)
}

#* Sleeps zzz seconds, then answers.
#* @serializer unboxedJSON
#* @get /sleep
function(zzz = "1") {
  Sys.sleep(as.numeric(zzz))
  list(slept = as.numeric(zzz), pid = Sys.getpid())
}

#* Writes a line to stdout and one to stderr, for the logs.
#* @serializer unboxedJSON
#* @get /say
function(msg = "hi") {
  cat("out:", msg, "\n")
  message("err: ", msg)
  list(pid = Sys.getpid())
}
