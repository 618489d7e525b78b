#include "line_reader.hpp"

#include <unistd.h>

#include "util.hpp"

namespace valve {

namespace {
constexpr size_t kMaxLine = 8192;
}

LineReader::LineReader(uv_loop_t *loop, int fd, Sink sink)
    : pipe_(new_handle<uv_pipe_t>(this)), sink_(std::move(sink)) {
  uv_pipe_init(loop, pipe_, 0);
  if (uv_pipe_open(pipe_, fd) != 0) {
    close(fd);
    close_handle(pipe_);
    return;
  }
  uv_read_start(reinterpret_cast<uv_stream_t *>(pipe_), alloc_read_buffer,
                [](uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
                  if (auto *self = static_cast<LineReader *>(s->data)) self->on_read(n, buf);
                });
}

LineReader::~LineReader() { close_handle(pipe_); }

void LineReader::drain() {
  uv_os_fd_t fd = -1;
  if (!pipe_ || uv_fileno(reinterpret_cast<uv_handle_t *>(pipe_), &fd) != 0) return;
  // libuv made the pipe non-blocking; its own next read then finds what is left (or EAGAIN).
  char buf[4096];
  for (int i = 0; i < 16 && pipe_; ++i) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) return;  // end of file is left for libuv to see
    uv_buf_t b = uv_buf_init(buf, static_cast<unsigned>(n));
    on_read(n, &b);
  }
}

void LineReader::on_read(ssize_t n, const uv_buf_t *buf) {
  if (n < 0) {
    if (!partial_.empty()) sink_(partial_);
    partial_.clear();
    close_handle(pipe_);
    return;
  }
  std::string_view data(buf->base, static_cast<size_t>(n));
  while (!data.empty()) {
    size_t nl = data.find('\n');
    if (nl == std::string_view::npos) {
      partial_.append(data);
      if (partial_.size() >= kMaxLine) {
        sink_(partial_);
        partial_.clear();
      }
      return;
    }
    partial_.append(data.substr(0, nl));
    if (!partial_.empty() && partial_.back() == '\r') partial_.pop_back();
    sink_(partial_);
    partial_.clear();
    data.remove_prefix(nl + 1);
  }
}

}  // namespace valve
