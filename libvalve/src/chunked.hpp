// The chunked transfer coding (RFC 9112 7.1), decoded to its data: valve's own decoder, since
// llhttp 8.1 refuses chunk extensions with whitespace around ";" and "=", which the RFC allows
// (chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )). Extensions and
// trailer fields are checked and dropped: valve frames what it forwards itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace valve {

class ChunkedDecoder {
 public:
  enum class Result { more, done, error };
  // Gets each piece of chunk data; returns false to stop decoding (feed() then fails).
  using DataFn = std::function<bool(std::string_view)>;

  // max_meta bounds the bytes of chunk extensions and trailer fields in one body.
  explicit ChunkedDecoder(size_t max_meta) : max_meta_(max_meta) {}

  void reset();
  // Decodes the next bytes of a body. *used tells how many were taken: all of them on more, up to
  // the end of the body on done (what follows belongs to the next message).
  Result feed(std::string_view in, size_t *used, const DataFn &on_data);
  const std::string &error() const { return error_; }
  // The body ended in too many extension or trailer bytes (a limit, not a syntax error).
  bool limit_hit() const { return limit_hit_; }

 private:
  enum class State {
    size,           // chunk-size hex digits
    size_ws,        // BWS after the size: a ";" must follow
    ext_name,       // a chunk-ext-name (token)
    ext_name_ws,    // BWS after the name: "=", ";" or the line's end
    ext_eq_ws,      // BWS after "="
    ext_value,      // a token value
    ext_quoted,     // inside a quoted-string value
    ext_escape,     // after a backslash in one
    ext_after,      // after a value: BWS, then ";" or the line's end
    ext_semi_ws,    // BWS after ";"
    size_lf,        // the LF of the chunk-size line
    data,           // chunk data
    data_cr,        // the CR after chunk data
    data_lf,        // the LF after it
    trailer_start,  // a trailer line's first byte, or the CR of the final empty line
    trailer_line,   // in a trailer field line
    trailer_lf,     // the LF of a trailer line
    end_lf,         // the LF of the final empty line
    done,
  };

  Result fail(std::string why);
  bool count_meta();

  size_t max_meta_;
  State state_ = State::size;
  uint64_t remaining_ = 0;  // of the current chunk's data
  size_t digits_ = 0;       // of the current chunk-size, leading zeros but one excepted
  bool any_digit_ = false;
  size_t meta_ = 0;
  bool limit_hit_ = false;
  std::string error_;
  std::string trailer_;  // the current trailer line, checked when it ends
};

}  // namespace valve
