#include "router.hpp"

#include <fmt/format.h>

#include <cmath>

#include "http.hpp"
#include "util.hpp"

namespace valve {

namespace {

// FNV-1a over the bytes, then splitmix64's finalizer to spread them over all 64 bits.
uint64_t hash64(std::string_view a, std::string_view b) {
  uint64_t h = fnv1a64(a);
  h = fnv1a64("\xff", h);  // a separator no byte of a string can fake
  h = fnv1a64(b, h);
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

// The path of a request target, without its query.
std::string_view target_path(std::string_view target) {
  return target.substr(0, target.find_first_of("?#"));
}

bool prefix_matches(std::string_view prefix, std::string_view path) {
  if (prefix == "/") return true;
  if (!path.starts_with(prefix)) return false;
  return path.size() == prefix.size() || prefix.back() == '/' || path[prefix.size()] == '/';
}

bool host_matches(std::string_view want, std::string_view host_header) {
  std::string_view host = trim(host_header);
  if (!host.empty() && host.front() == '[') {
    host = host.substr(0, host.find(']') + 1);  // [::1]:3000
  } else {
    host = host.substr(0, host.find(':'));
  }
  if (host.ends_with('.')) host.remove_suffix(1);
  return iequals(want, host);
}

}  // namespace

bool StickyKey::parse(std::string_view text) {
  if (text == "ip") {
    kind = Kind::ip;
    name.clear();
    return true;
  }
  for (auto [tag, k] : {std::pair{std::string_view("header:"), Kind::header},
                        std::pair{std::string_view("cookie:"), Kind::cookie}}) {
    if (text.starts_with(tag) && text.size() > tag.size()) {
      kind = k;
      name = std::string(text.substr(tag.size()));
      return true;
    }
  }
  return false;
}

std::string StickyKey::describe() const {
  switch (kind) {
    case Kind::header:
      return "header:" + name;
    case Kind::cookie:
      return "cookie:" + name;
    case Kind::ip:
      break;
  }
  return "ip";
}

std::string Route::describe() const {
  std::string to;
  for (const auto &b : backends) {
    if (!to.empty()) to += ", ";
    to += backends.size() == 1 ? b.app : fmt::format("{} ({})", b.app, b.weight);
  }
  return fmt::format("{}{} -> {}", hostname, prefix, to);
}

const Route *match_route(const std::vector<Route> &routes, std::string_view host_header,
                         std::string_view target) {
  std::string_view path = target_path(target);
  const Route *best = nullptr;
  for (const Route &r : routes) {
    if (!r.hostname.empty() && !host_matches(r.hostname, host_header)) continue;
    if (!prefix_matches(r.prefix, path)) continue;
    if (!best || r.prefix.size() > best->prefix.size() ||
        (r.prefix.size() == best->prefix.size() && best->hostname.empty() && !r.hostname.empty()))
      best = &r;
  }
  return best;
}

size_t pick_backend(const Route &route, std::string_view key) {
  size_t best = 0;
  double best_score = -1;
  for (size_t i = 0; i < route.backends.size(); ++i) {
    const Backend &b = route.backends[i];
    if (!(b.weight > 0)) continue;
    // u is uniform in (0, 1); -ln(u) / weight is exponential with rate weight, and the smallest of
    // such draws falls to each backend with probability weight / (sum of weights).
    uint64_t h = hash64(key, b.app);
    double u = (static_cast<double>(h >> 11) + 0.5) / 9007199254740992.0;  // 2^53
    double score = b.weight / -std::log(u);
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  return best;
}

std::string_view cookie_value(std::string_view header, std::string_view name) {
  while (!header.empty()) {
    size_t end = header.find(';');
    std::string_view pair = trim(header.substr(0, end));
    size_t eq = pair.find('=');
    if (eq != std::string_view::npos && trim(pair.substr(0, eq)) == name) {
      std::string_view value = trim(pair.substr(eq + 1));
      if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
        value = value.substr(1, value.size() - 2);
      return value;
    }
    if (end == std::string_view::npos) break;
    header.remove_prefix(end + 1);
  }
  return {};
}

std::string sticky_key(const Route &route, const Head &request, std::string_view peer_ip) {
  const StickyKey &k = route.sticky;
  if (k.kind == StickyKey::Kind::header) {
    if (const std::string *v = request.find(k.name); v && !trim(*v).empty())
      return "h:" + std::string(trim(*v));
  } else if (k.kind == StickyKey::Kind::cookie) {
    for (const Header &h : request.headers) {
      if (!iequals(h.name, "cookie")) continue;
      if (auto v = cookie_value(h.value, k.name); !v.empty()) return "c:" + std::string(v);
    }
  }
  return "ip:" + std::string(peer_ip);
}

std::string strip_prefix(std::string_view target, std::string_view prefix) {
  if (prefix == "/" || !target.starts_with(prefix)) return std::string(target);
  std::string_view rest = target.substr(prefix.size());
  if (prefix.back() == '/') return "/" + std::string(rest);
  if (rest.empty() || rest.front() == '?' || rest.front() == '#') return "/" + std::string(rest);
  return std::string(rest);
}

}  // namespace valve
