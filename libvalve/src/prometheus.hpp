// Prometheus metrics: a histogram of observations and a builder of the text exposition format
// (version 0.0.4) that `promtool check metrics` accepts. Single-threaded: used on the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace valve {

// Counts observations into buckets by upper bound (v <= bound), plus an implicit +Inf bucket.
class Histogram {
 public:
  // bounds: finite and strictly ascending (asserted).
  explicit Histogram(std::vector<double> bounds = latency_buckets());
  // Seconds, 1ms to 60s: R APIs answer in milliseconds to tens of seconds.
  static std::vector<double> latency_buckets();

  void observe(double v);  // NaN is ignored
  // Adds other's observations; its bounds must be the same (asserted).
  Histogram &operator+=(const Histogram &other);
  const std::vector<double> &bounds() const { return bounds_; }
  // Observations <= each bound, in the order of bounds(); the +Inf bucket is count().
  std::vector<uint64_t> cumulative() const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  // Estimates the q-quantile (0 <= q <= 1) by linear interpolation inside its bucket, as
  // Prometheus' histogram_quantile does: the first bucket starts at 0, and a rank in the +Inf
  // bucket gives the largest finite bound. 0 when empty.
  double quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last one is +Inf
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Builds one scrape's text. Samples are grouped by metric name into families, kept in the order
// of each name's first use, so calls for one name need not be adjacent; HELP and TYPE come from
// the first call. Asserted, as promtool warns otherwise: metric and label names are lower-case
// [a-z0-9_] (label names not starting "__"), help is not empty, counters' names end in "_total"
// and no other's does, a histogram's labels do not include "le". Each label set should appear
// once per name.
class MetricsText {
 public:
  struct Label {
    std::string name;
    std::string value;  // any text: escaped on output
  };
  using Labels = std::vector<Label>;

  void counter(std::string_view name, std::string_view help, double value,
               const Labels &labels = {});
  void gauge(std::string_view name, std::string_view help, double value, const Labels &labels = {});
  // Writes name_bucket{le="..."} for each bound and "+Inf", then name_sum and name_count.
  void histogram(std::string_view name, std::string_view help, const Histogram &h,
                 const Labels &labels = {});
  std::string str() const;

 private:
  struct Family {
    std::string type;
    std::string head;  // the HELP and TYPE lines
    std::string samples;
  };
  std::string &samples(std::string_view name, std::string_view help, std::string_view type);

  std::vector<Family> families_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> families_ index
};

}  // namespace valve
