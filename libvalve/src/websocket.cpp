#include "websocket.hpp"

#include <algorithm>

namespace valve {

namespace websocket {

namespace {

constexpr size_t kMaxControlPayload = 125;

bool is_control(uint8_t opcode) { return (opcode & 0x8) != 0; }

std::string header(Opcode opcode, size_t length, bool masked) {
  std::string out;
  out += static_cast<char>(0x80 | static_cast<uint8_t>(opcode));
  uint8_t mask_bit = masked ? 0x80 : 0;
  if (length < 126) {
    out += static_cast<char>(mask_bit | length);
  } else if (length <= 0xFFFF) {
    out += static_cast<char>(mask_bit | 126);
    out += static_cast<char>(length >> 8);
    out += static_cast<char>(length & 0xFF);
  } else {
    out += static_cast<char>(mask_bit | 127);
    for (int shift = 56; shift >= 0; shift -= 8)
      out += static_cast<char>((static_cast<uint64_t>(length) >> shift) & 0xFF);
  }
  return out;
}

std::string_view fit(Opcode opcode, std::string_view payload) {
  return is_control(static_cast<uint8_t>(opcode)) ? payload.substr(0, kMaxControlPayload) : payload;
}

}  // namespace

std::string frame(Opcode opcode, std::string_view payload) {
  payload = fit(opcode, payload);
  std::string out = header(opcode, payload.size(), false);
  out += payload;
  return out;
}

std::string masked_frame(Opcode opcode, std::string_view payload, uint32_t mask_key) {
  payload = fit(opcode, payload);
  std::string out = header(opcode, payload.size(), true);
  uint8_t key[4] = {static_cast<uint8_t>(mask_key >> 24), static_cast<uint8_t>(mask_key >> 16),
                    static_cast<uint8_t>(mask_key >> 8), static_cast<uint8_t>(mask_key)};
  out.append(reinterpret_cast<const char *>(key), 4);
  for (size_t i = 0; i < payload.size(); ++i)
    out += static_cast<char>(static_cast<uint8_t>(payload[i]) ^ key[i % 4]);
  return out;
}

std::string close_payload(uint16_t code, std::string_view reason) {
  std::string out;
  out += static_cast<char>(code >> 8);
  out += static_cast<char>(code & 0xFF);
  out += reason.substr(0, kMaxControlPayload - 2);
  return out;
}

}  // namespace websocket

size_t FrameTracker::header_size() const {
  if (have_ < 2) return 2;
  uint8_t length7 = header_[1] & 0x7F;
  size_t extended = length7 == 126 ? 2 : length7 == 127 ? 8 : 0;
  size_t mask = (header_[1] & 0x80) ? 4 : 0;
  return 2 + extended + mask;
}

void FrameTracker::start_payload() {
  uint8_t opcode = header_[0] & 0x0F;
  bool fin = (header_[0] & 0x80) != 0;
  uint8_t length7 = header_[1] & 0x7F;
  uint64_t length = length7;
  if (length7 == 126) {
    length = (uint64_t{header_[2]} << 8) | header_[3];
  } else if (length7 == 127) {
    length = 0;
    for (size_t i = 2; i < 10; ++i) length = (length << 8) | header_[i];
  }
  bool known = opcode <= 0x2 || (opcode >= 0x8 && opcode <= 0xA);
  bool control = websocket::is_control(opcode);
  // RFC 6455 5.2 and 5.5: a 64-bit length's top bit is 0; control frames are whole and short.
  if (!known || (length >> 63) != 0 || (control && (!fin || length > 125))) {
    state_ = State::broken;
    return;
  }
  ++frames_;
  data_frame_ = !control;
  remaining_ = length;
  have_ = 0;
  state_ = remaining_ > 0 ? State::payload : State::header;
}

FrameTracker::Seen FrameTracker::feed(std::string_view bytes) {
  Seen seen;
  size_t pos = 0;
  while (pos < bytes.size() && state_ != State::broken) {
    if (state_ == State::payload) {
      uint64_t take = std::min<uint64_t>(remaining_, bytes.size() - pos);
      (data_frame_ ? seen.data : seen.control) = true;
      pos += take;
      remaining_ -= take;
      if (remaining_ == 0) state_ = State::header;
      continue;
    }
    // A header byte: its frame's kind is known from the first one on.
    header_[have_++] = static_cast<uint8_t>(bytes[pos++]);
    (websocket::is_control(header_[0] & 0x0F) ? seen.control : seen.data) = true;
    if (have_ == header_size()) start_payload();
  }
  return seen;
}

}  // namespace valve
