// WebSocket frames (RFC 6455 5.2) as they pass through a tunnel: where each one ends, so that valve
// can put a frame of its own (a Ping, a Close) between two of the peer's, and whether the bytes
// were data or control; and the few frames valve writes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace valve {

namespace websocket {

enum class Opcode : uint8_t {
  continuation = 0x0,
  text = 0x1,
  binary = 0x2,
  close = 0x8,
  ping = 0x9,
  pong = 0xA,
};

// Close codes valve sends (RFC 6455 7.4.1).
constexpr uint16_t kGoingAway = 1001;  // a limit of valve's: idle, lifetime

// One frame, FIN set: unmasked (server to client) or masked with mask_key (client to server).
// Control frames carry at most 125 bytes (longer payloads are cut).
std::string frame(Opcode opcode, std::string_view payload);
std::string masked_frame(Opcode opcode, std::string_view payload, uint32_t mask_key);
// A Close frame's payload: the code, then a reason (cut to fit 125 bytes).
std::string close_payload(uint16_t code, std::string_view reason);

}  // namespace websocket

// Follows one direction of a WebSocket stream, frame header by frame header, without copying or
// unmasking payloads: fed the bytes in any pieces, it knows whether the stream is between two
// frames. Extensions (permessage-deflate sets RSV1) are no matter: only the framing is read.
class FrameTracker {
 public:
  // What the bytes of one feed() belonged to.
  struct Seen {
    bool data = false;     // part of a text, binary or continuation frame (its header or payload)
    bool control = false;  // part of a close, ping or pong frame
  };

  Seen feed(std::string_view bytes);
  // Between two frames (or before the first): a whole frame may be inserted here.
  bool at_boundary() const { return state_ == State::header && have_ == 0; }
  // The bytes are not WebSocket frames (a reserved opcode, a fragmented or oversized control frame,
  // a 64-bit length with its top bit set): the tracker stops, and nothing may be inserted again.
  bool broken() const { return state_ == State::broken; }
  uint64_t frames() const { return frames_; }  // frames whose header was read

 private:
  enum class State { header, payload, broken };
  // The header is whole once have_ reaches this (2 bytes, then the extended length and mask).
  size_t header_size() const;
  void start_payload();

  State state_ = State::header;
  uint8_t header_[14] = {};
  size_t have_ = 0;         // header bytes read so far
  uint64_t remaining_ = 0;  // payload bytes still to come
  bool data_frame_ = false;
  uint64_t frames_ = 0;
};

}  // namespace valve
