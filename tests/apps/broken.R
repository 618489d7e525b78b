# A plumber file with a syntax error: no worker can ever start, so valvectl must exit 1 and show
# R's error message.

#* @get /hello
function() {
  list(msg = "never served"
}
