// websocket.hpp: the frame tracker that tells where a tunnel's frames end (fed whole streams, and
// the same streams split at every byte boundary), and the frames valve writes.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "websocket.hpp"

namespace {

using valve::FrameTracker;
using valve::websocket::Opcode;

// A frame as a peer would write it: any FIN, opcode and RSV bits, masked or not.
std::string raw_frame(uint8_t first, std::string_view payload, bool masked) {
  std::string out(1, static_cast<char>(first));
  uint8_t mask = masked ? 0x80 : 0;
  size_t n = payload.size();
  if (n < 126) {
    out += static_cast<char>(mask | n);
  } else if (n <= 0xFFFF) {
    out += static_cast<char>(mask | 126);
    out += static_cast<char>(n >> 8);
    out += static_cast<char>(n & 0xFF);
  } else {
    out += static_cast<char>(mask | 127);
    for (int shift = 56; shift >= 0; shift -= 8)
      out += static_cast<char>((uint64_t{n} >> shift) & 0xFF);
  }
  if (masked) out += std::string("\x12\x34\x56\x78", 4);
  out += payload;  // masking does not change the length: the tracker never unmasks
  return out;
}

// A stream of every kind of frame and length encoding, and the offsets where its frames end.
struct Stream {
  std::string bytes;
  std::vector<size_t> boundaries;  // after each frame
  void add(const std::string &frame) {
    bytes += frame;
    boundaries.push_back(bytes.size());
  }
};

Stream mixed_stream(bool masked) {
  Stream s;
  s.add(raw_frame(0x81, "hello", masked));                     // text, 7-bit length
  s.add(raw_frame(0x89, "", masked));                          // ping, empty
  s.add(raw_frame(0x02, std::string(200, 'b'), masked));       // binary, not FIN, 16-bit length
  s.add(raw_frame(0x8A, "pong", masked));                      // pong between fragments
  s.add(raw_frame(0x80, std::string(70000, 'c'), masked));     // continuation, 64-bit length
  s.add(raw_frame(0xC1, std::string(125, 'd'), masked));       // RSV1 (permessage-deflate)
  s.add(raw_frame(0x81, "", masked));                          // empty text
  s.add(raw_frame(0x88, std::string("\x03\xe8", 2), masked));  // close 1000
  return s;
}

bool is_boundary(const Stream &s, size_t at) {
  if (at == 0) return true;
  for (size_t b : s.boundaries)
    if (b == at) return true;
  return false;
}

}  // namespace

TEST_CASE("websocket tracker: a whole stream, server's unmasked and client's masked frames") {
  for (bool masked : {false, true}) {
    Stream s = mixed_stream(masked);
    FrameTracker t;
    CHECK(t.at_boundary());
    FrameTracker::Seen seen = t.feed(s.bytes);
    CHECK(seen.data);
    CHECK(seen.control);
    CHECK(t.at_boundary());
    CHECK_FALSE(t.broken());
    CHECK(t.frames() == s.boundaries.size());
  }
}

TEST_CASE("websocket tracker: split at every byte boundary, it is between frames exactly there") {
  for (bool masked : {false, true}) {
    Stream s = mixed_stream(masked);
    // The stream in two pieces, cut at each offset: the boundary is right after the first piece.
    for (size_t cut = 0; cut <= s.bytes.size(); ++cut) {
      FrameTracker t;
      t.feed(std::string_view(s.bytes).substr(0, cut));
      // Checked without doctest's macros in the loop (70 000 cuts), then once.
      bool right = t.at_boundary() == is_boundary(s, cut);
      t.feed(std::string_view(s.bytes).substr(cut));
      if (!right || !t.at_boundary() || t.frames() != s.boundaries.size())
        FAIL("cut at ", cut, " masked ", masked);
    }
    // One byte at a time: the state after every byte.
    FrameTracker t;
    for (size_t i = 0; i < s.bytes.size(); ++i) {
      t.feed(std::string_view(s.bytes).substr(i, 1));
      if (t.at_boundary() != is_boundary(s, i + 1)) FAIL("byte ", i + 1, " masked ", masked);
    }
    CHECK(t.frames() == s.boundaries.size());
    CHECK_FALSE(t.broken());
  }
}

TEST_CASE("websocket tracker: data or control, byte by byte") {
  std::string ping = raw_frame(0x89, "abc", true);
  std::string text = raw_frame(0x81, "abc", true);
  FrameTracker t;
  for (char c : ping) {
    FrameTracker::Seen seen = t.feed(std::string_view(&c, 1));
    CHECK(seen.control);
    CHECK_FALSE(seen.data);
  }
  for (char c : text) {
    FrameTracker::Seen seen = t.feed(std::string_view(&c, 1));
    CHECK(seen.data);
    CHECK_FALSE(seen.control);
  }
  // A pong and a text in one read: both.
  FrameTracker::Seen both = t.feed(raw_frame(0x8A, "", false) + raw_frame(0x82, "x", false));
  CHECK(both.data);
  CHECK(both.control);
  CHECK(t.feed("").data == false);
}

TEST_CASE("websocket tracker: what is no WebSocket stream breaks it for good") {
  SUBCASE("a reserved opcode") {
    FrameTracker t;
    t.feed(raw_frame(0x83, "x", false));
    CHECK(t.broken());
  }
  SUBCASE("a fragmented control frame") {
    FrameTracker t;
    t.feed(raw_frame(0x09, "x", false));
    CHECK(t.broken());
  }
  SUBCASE("a control frame over 125 bytes") {
    FrameTracker t;
    t.feed(raw_frame(0x89, std::string(126, 'x'), false));
    CHECK(t.broken());
  }
  SUBCASE("a 64-bit length with its top bit set") {
    FrameTracker t;
    t.feed(std::string("\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x01", 10));
    CHECK(t.broken());
  }
  SUBCASE("HTTP after all") {
    FrameTracker t;
    t.feed("HTTP/1.1 200 OK\r\n");
    CHECK(t.broken());
    CHECK_FALSE(t.at_boundary());
    CHECK_FALSE(t.feed(raw_frame(0x81, "x", false)).data);  // it stays broken
  }
}

TEST_CASE("websocket frames valve writes: parsed back by the tracker and by hand") {
  std::string ping = valve::websocket::frame(Opcode::ping, "valve");
  CHECK(ping == std::string("\x89\x05valve", 7));
  std::string close = valve::websocket::frame(
      Opcode::close, valve::websocket::close_payload(valve::websocket::kGoingAway, "idle timeout"));
  CHECK(close.substr(0, 4) == std::string("\x88\x0e\x03\xe9", 4));
  CHECK(close.substr(4) == "idle timeout");
  // Masked (valve to the worker): the payload XOR the key, the key after the length.
  std::string masked =
      valve::websocket::masked_frame(Opcode::close, std::string("\x03\xe9", 2), 0x01020304);
  CHECK(masked == std::string("\x88\x82\x01\x02\x03\x04\x02\xeb", 8));
  // A control frame's payload is cut to 125 bytes, a long reason to fit.
  CHECK(valve::websocket::frame(Opcode::ping, std::string(300, 'p')).size() == 127);
  CHECK(valve::websocket::close_payload(1001, std::string(300, 'r')).size() == 125);
  // Lengths of each encoding, as the tracker reads them.
  for (size_t n : {0, 125, 126, 65535, 65536, 100000}) {
    std::string text = valve::websocket::frame(Opcode::text, std::string(n, 't'));
    std::string bin = valve::websocket::masked_frame(Opcode::binary, std::string(n, 'b'), 7);
    FrameTracker t;
    t.feed(text + bin);
    CHECK(t.at_boundary());
    CHECK(t.frames() == 2);
    CHECK_FALSE(t.broken());
    FrameTracker partial;
    partial.feed(std::string_view(text).substr(0, text.size() - 1));
    CHECK_FALSE(partial.at_boundary());
  }
  CHECK(valve::websocket::frame(Opcode::text, std::string(70000, 't')).substr(0, 10) ==
        std::string("\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70", 10));
}
