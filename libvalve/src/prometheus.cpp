#include "prometheus.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cmath>

namespace valve {

namespace {

// Lower case only: promtool warns about camelCase and about ':' (reserved for recording rules).
[[maybe_unused]] bool valid_name(std::string_view s) {
  auto ok = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; };
  return !s.empty() && !(s[0] >= '0' && s[0] <= '9') && std::all_of(s.begin(), s.end(), ok);
}

// fmt's shortest round-trip form ("1", "0.25", "1e+20") parses as Go floats; non-finite values
// need the format's own spelling.
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// HELP text escapes backslash and newline; label values also the double quote.
void escape(std::string &out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && quote) {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

void write_sample(std::string &out, std::string_view name, const MetricsText::Labels &labels,
                  double value, std::string_view le = {}) {
  out += name;
  char sep = '{';
  for (const auto &l : labels) {
    assert(valid_name(l.name) && !l.name.starts_with("__"));
    out += fmt::format("{}{}=\"", sep, l.name);
    escape(out, l.value, true);
    out += '"';
    sep = ',';
  }
  if (!le.empty()) out += fmt::format("{}le=\"{}\"", sep, le);
  if (sep == ',' || !le.empty()) out += '}';
  out += fmt::format(" {}\n", number(value));
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {
  assert(std::all_of(bounds_.begin(), bounds_.end(), [](double b) { return std::isfinite(b); }));
  assert(std::adjacent_find(bounds_.begin(), bounds_.end(), std::greater_equal<>()) ==
         bounds_.end());
}

std::vector<double> Histogram::latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

void Histogram::observe(double v) {
  if (std::isnan(v)) return;
  // The first bound >= v: buckets are "less than or equal".
  ++counts_[std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin()];
  ++count_;
  sum_ += v;
}

Histogram &Histogram::operator+=(const Histogram &other) {
  assert(other.bounds_ == bounds_);
  for (size_t i = 0; i < counts_.size() && i < other.counts_.size(); ++i)
    counts_[i] += other.counts_[i];
  count_ += other.count_;
  sum_ += other.sum_;
  return *this;
}

std::vector<uint64_t> Histogram::cumulative() const {
  std::vector<uint64_t> out(bounds_.size());
  uint64_t n = 0;
  for (size_t i = 0; i < out.size(); ++i) out[i] = n += counts_[i];
  return out;
}

double Histogram::quantile(double q) const {
  if (count_ == 0 || bounds_.empty()) return 0;
  double rank = std::clamp(q, 0.0, 1.0) * static_cast<double>(count_);
  // The first non-empty bucket that reaches the rank (skipping empty ones keeps q=0 finite).
  uint64_t below = 0;
  size_t i = 0;
  while (counts_[i] == 0 || static_cast<double>(below + counts_[i]) < rank) below += counts_[i++];
  if (i == bounds_.size()) return bounds_.back();
  if (i == 0 && bounds_[0] <= 0) return bounds_[0];
  double lower = i == 0 ? 0 : bounds_[i - 1];
  return lower + (bounds_[i] - lower) *
                     ((rank - static_cast<double>(below)) / static_cast<double>(counts_[i]));
}

std::string &MetricsText::samples(std::string_view name, std::string_view help,
                                  std::string_view type) {
  assert(valid_name(name) && !help.empty());
  assert((type == "counter") == name.ends_with("_total"));
  if (auto it = index_.find(name); it != index_.end()) {
    assert(families_[it->second].type == type);
    return families_[it->second].samples;
  }
  index_.emplace(std::string(name), families_.size());
  Family &f = families_.emplace_back();
  f.type = type;
  f.head = fmt::format("# HELP {} ", name);
  escape(f.head, help, false);
  f.head += fmt::format("\n# TYPE {} {}\n", name, type);
  return f.samples;
}

void MetricsText::counter(std::string_view name, std::string_view help, double value,
                          const Labels &labels) {
  assert(!(value < 0));
  write_sample(samples(name, help, "counter"), name, labels, value);
}

void MetricsText::gauge(std::string_view name, std::string_view help, double value,
                        const Labels &labels) {
  write_sample(samples(name, help, "gauge"), name, labels, value);
}

void MetricsText::histogram(std::string_view name, std::string_view help, const Histogram &h,
                            const Labels &labels) {
  assert(std::none_of(labels.begin(), labels.end(), [](const Label &l) { return l.name == "le"; }));
  std::string &out = samples(name, help, "histogram");
  std::string bucket = fmt::format("{}_bucket", name);
  auto cumulative = h.cumulative();
  for (size_t i = 0; i < cumulative.size(); ++i)
    write_sample(out, bucket, labels, static_cast<double>(cumulative[i]), number(h.bounds()[i]));
  write_sample(out, bucket, labels, static_cast<double>(h.count()), "+Inf");
  write_sample(out, fmt::format("{}_sum", name), labels, h.sum());
  write_sample(out, fmt::format("{}_count", name), labels, static_cast<double>(h.count()));
}

std::string MetricsText::str() const {
  std::string out;
  for (const auto &f : families_) out += f.head + f.samples;
  return out;
}

}  // namespace valve
