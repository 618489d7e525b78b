#include "chunked.hpp"

#include <fmt/format.h>

#include "util.hpp"

namespace valve {

namespace {

int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_ws(unsigned char c) { return c == ' ' || c == '\t'; }

bool is_tchar(unsigned char c) {
  return is_token(std::string_view(reinterpret_cast<char *>(&c), 1));
}

// qdtext (RFC 9110 5.6.4): HTAB, SP, VCHAR but '"' and '\', obs-text.
bool is_qdtext(unsigned char c) {
  return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5B) ||
         (c >= 0x5D && c <= 0x7E) || c >= 0x80;
}

// What a quoted-pair may escape: HTAB, SP, VCHAR, obs-text.
bool is_escapable(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7F); }

// A field value's bytes: VCHAR, SP, HTAB, obs-text (no CTLs, RFC 9110 5.5).
bool is_field_byte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7F); }

// A trailer field line: a token name, a colon, then a value of field bytes.
bool valid_trailer(std::string_view line) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) return false;
  for (unsigned char c : line.substr(colon + 1)) {
    if (!is_field_byte(c)) return false;
  }
  return true;
}

}  // namespace

void ChunkedDecoder::reset() {
  state_ = State::size;
  remaining_ = 0;
  digits_ = 0;
  any_digit_ = false;
  meta_ = 0;
  limit_hit_ = false;
  error_.clear();
  trailer_.clear();
}

ChunkedDecoder::Result ChunkedDecoder::fail(std::string why) {
  error_ = std::move(why);
  return Result::error;
}

bool ChunkedDecoder::count_meta() {
  if (++meta_ <= max_meta_) return true;
  limit_hit_ = true;
  error_ = fmt::format("chunk extensions and trailers larger than {} bytes", max_meta_);
  return false;
}

ChunkedDecoder::Result ChunkedDecoder::feed(std::string_view in, size_t *used,
                                            const DataFn &on_data) {
  size_t i = 0;
  *used = 0;
  while (i < in.size()) {
    auto c = static_cast<unsigned char>(in[i]);
    switch (state_) {
      case State::size: {
        int v = hex_value(c);
        if (v >= 0) {
          any_digit_ = true;
          if (digits_ > 0 || v > 0) ++digits_;
          // 15 hex digits (2^60 bytes) is more than any body: a longer size is an overflow attempt.
          if (digits_ > 15) return fail("chunk size too large");
          remaining_ = remaining_ * 16 + static_cast<uint64_t>(v);
          ++i;
          break;
        }
        if (!any_digit_) return fail("a chunk size must start with a hex digit");
        if (c == '\r') {
          state_ = State::size_lf;
        } else if (c == ';') {
          state_ = State::ext_semi_ws;
        } else if (is_ws(c)) {
          state_ = State::size_ws;
        } else {
          return fail("invalid character in chunk size");
        }
        ++i;
        break;
      }
      case State::size_ws:
        if (!count_meta()) return Result::error;
        if (c == ';') {
          state_ = State::ext_semi_ws;
        } else if (!is_ws(c)) {
          return fail("whitespace after a chunk size must lead to an extension (\";\")");
        }
        ++i;
        break;
      case State::ext_semi_ws:
        if (!count_meta()) return Result::error;
        if (is_tchar(c)) {
          state_ = State::ext_name;
        } else if (!is_ws(c)) {
          return fail("a chunk extension needs a name");
        }
        ++i;
        break;
      case State::ext_name:
        if (!count_meta()) return Result::error;
        if (is_tchar(c)) {
          ++i;
          break;
        }
        state_ = State::ext_name_ws;
        break;  // the same byte again, in the next state
      case State::ext_name_ws:
        if (c == '\r') {
          state_ = State::size_lf;
        } else if (c == ';') {
          state_ = State::ext_semi_ws;
        } else if (c == '=') {
          state_ = State::ext_eq_ws;
        } else if (!is_ws(c)) {
          return fail("invalid character in chunk extension");
        }
        if (!count_meta()) return Result::error;
        ++i;
        break;
      case State::ext_eq_ws:
        if (!count_meta()) return Result::error;
        if (c == '"') {
          state_ = State::ext_quoted;
        } else if (is_tchar(c)) {
          state_ = State::ext_value;
        } else if (!is_ws(c)) {
          return fail("invalid chunk extension value");
        }
        ++i;
        break;
      case State::ext_value:
        if (is_tchar(c)) {
          if (!count_meta()) return Result::error;
          ++i;
          break;
        }
        state_ = State::ext_after;
        break;
      case State::ext_quoted:
        if (!count_meta()) return Result::error;
        if (c == '"') {
          state_ = State::ext_after;
        } else if (c == '\\') {
          state_ = State::ext_escape;
        } else if (!is_qdtext(c)) {
          return fail("invalid character in a quoted chunk extension value");
        }
        ++i;
        break;
      case State::ext_escape:
        if (!count_meta()) return Result::error;
        if (!is_escapable(c)) return fail("invalid escape in a quoted chunk extension value");
        state_ = State::ext_quoted;
        ++i;
        break;
      case State::ext_after:
        if (!count_meta()) return Result::error;
        if (c == '\r') {
          state_ = State::size_lf;
        } else if (c == ';') {
          state_ = State::ext_semi_ws;
        } else if (!is_ws(c)) {
          return fail("invalid character after a chunk extension");
        }
        ++i;
        break;
      case State::size_lf:
        if (c != '\n') return fail("a chunk-size line must end in CRLF");
        ++i;
        state_ = remaining_ == 0 ? State::trailer_start : State::data;
        break;
      case State::data: {
        size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, in.size() - i));
        if (!on_data(in.substr(i, n))) {
          *used = i + n;
          return fail("stopped");
        }
        i += n;
        remaining_ -= n;
        if (remaining_ == 0) state_ = State::data_cr;
        break;
      }
      case State::data_cr:
        if (c != '\r') return fail("chunk data must end in CRLF");
        state_ = State::data_lf;
        ++i;
        break;
      case State::data_lf:
        if (c != '\n') return fail("chunk data must end in CRLF");
        state_ = State::size;
        digits_ = 0;
        any_digit_ = false;
        ++i;
        break;
      case State::trailer_start:
        if (c == '\r') {
          state_ = State::end_lf;
          ++i;
          break;
        }
        if (is_ws(c)) return fail("obs-fold in a trailer section");
        state_ = State::trailer_line;
        break;
      case State::trailer_line:
        if (c == '\r') {
          if (!valid_trailer(trailer_)) return fail("invalid trailer field");
          trailer_.clear();
          state_ = State::trailer_lf;
        } else {
          if (!count_meta()) return Result::error;
          trailer_ += static_cast<char>(c);
        }
        ++i;
        break;
      case State::trailer_lf:
        if (c != '\n') return fail("a trailer line must end in CRLF");
        state_ = State::trailer_start;
        ++i;
        break;
      case State::end_lf:
        if (c != '\n') return fail("a chunked body must end in CRLF");
        state_ = State::done;
        *used = i + 1;
        return Result::done;
      case State::done:
        *used = i;
        return Result::done;
    }
  }
  *used = i;
  return state_ == State::done ? Result::done : Result::more;
}

}  // namespace valve
