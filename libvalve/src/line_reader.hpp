// Reads a child's stdout or stderr as it comes, line by line.
#pragma once

#include <uv.h>

#include <functional>
#include <string>
#include <string_view>

namespace valve {

// How many of a child's last lines of output are kept, to quote when it fails.
constexpr size_t kOutputTailLines = 20;

class LineReader {
 public:
  using Sink = std::function<void(std::string_view line)>;
  // Takes ownership of fd (the read end of a pipe); sink gets each line without its newline, and
  // the last partial line at end of file.
  LineReader(uv_loop_t *loop, int fd, Sink sink);
  ~LineReader();
  LineReader(const LineReader &) = delete;
  LineReader &operator=(const LineReader &) = delete;

  // Reads what the pipe holds now, at once (up to 64 KB), rather than on the loop's next turn: a
  // worker's output written before its answer is then in before the answer is looked at.
  void drain();

 private:
  void on_read(ssize_t n, const uv_buf_t *buf);

  uv_pipe_t *pipe_;
  Sink sink_;
  std::string partial_;
};

}  // namespace valve
