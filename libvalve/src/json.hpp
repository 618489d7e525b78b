// The JSON valve writes (the status, events, JSON log lines, error bodies): nlohmann's
// ordered_json, whose members keep the order they were set in. Headers that only pass one along
// include <nlohmann/json_fwd.hpp> and name nlohmann::ordered_json.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace valve {

using Json = nlohmann::ordered_json;

// Compact text, on one line. Bytes that are not UTF-8 (a request target, a flag) become U+FFFD,
// where the strict handler would throw.
inline std::string json_text(const Json &value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// A double that stands for a setting (seconds, a weight) as fmt's "{}" writes it: a whole number as
// an integer (60, where nlohmann writes 60.0), so readers that tell integers apart see no change.
inline Json json_number(double v) {
  if (std::trunc(v) == v && std::fabs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

// v rounded to `places` decimals (0 to 6): as the "{:.3f}" and "{:.6f}" text valve wrote before
// rounded milliseconds and sums of seconds, so lines stay as short and readers get the same values.
inline double json_rounded(double v, int places) {
  static constexpr double kScale[] = {1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6};
  return std::round(v * kScale[places]) / kScale[places];
}

}  // namespace valve
