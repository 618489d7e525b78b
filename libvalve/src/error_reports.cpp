#include "error_reports.hpp"

#include <algorithm>

#include "error_hooks.hpp"
#include "util.hpp"

namespace valve {

Json ErrorReport::json() const {
  Json doc = Json::object();
  doc["time"] = format_utc(time_ms);
  doc["app"] = app;
  doc["route"] = route;
  doc["method"] = method;
  doc["target"] = target;
  doc["status"] = status;
  doc["request_id"] = request_id;
  doc["worker"] = worker;
  doc["pid"] = pid;
  doc["error"] = error;
  doc["output"] = output;
  doc["count"] = count;
  return doc;
}

std::string r_error_text(const std::vector<std::string> &lines) {
  auto is_condition = [](std::string_view l) {
    // print(condition): <simpleError in ...>, <error in ...>, <rlang_error ...>, <myError: ...>
    if (!l.starts_with('<')) return false;
    size_t end = l.find_first_of(" :>");
    std::string_view cls = l.substr(1, end == std::string_view::npos ? l.size() : end - 1);
    return cls.find("rror") != std::string_view::npos;
  };
  for (size_t i = lines.size(); i-- > 0;) {
    std::string_view first = lines[i];
    bool condition = is_condition(first);
    if (!condition && !first.starts_with("Error in ") && !first.starts_with("Error: ")) continue;
    std::string text;
    for (size_t j = i; j < lines.size(); ++j) {
      if (j > i) text += '\n';
      text += lines[j];
      if (condition && !lines[j].empty() && lines[j].back() == '>') break;
    }
    if (condition) {
      text.erase(0, 1);
      if (!text.empty() && text.back() == '>') text.pop_back();
    }
    return text;
  }
  return {};
}

void ErrorReports::add(ErrorReport report) {
  Route &route = routes_[{report.app, report.route}];
  report.count = ++route.count;
  ++total_;
  if (hooks_) hooks_->send(json_text(report.json()));
  route.latest.push_back(std::move(report));
  if (route.latest.size() > kErrorsKeptPerRoute) route.latest.pop_front();
}

Json ErrorReports::json() const {
  std::vector<const std::pair<const std::pair<std::string, std::string>, Route> *> order;
  for (const auto &entry : routes_) order.push_back(&entry);
  std::stable_sort(order.begin(), order.end(), [](auto *a, auto *b) {
    return a->second.latest.back().time_ms > b->second.latest.back().time_ms;
  });
  Json routes = Json::array();
  for (const auto *entry : order) {
    const auto &[key, route] = *entry;
    Json &r = routes.emplace_back(Json::object());
    r["app"] = key.first;
    r["route"] = key.second;
    r["count"] = route.count;
    Json latest = Json::array();
    for (auto it = route.latest.rbegin(); it != route.latest.rend(); ++it)
      latest.push_back(it->json());
    r["latest"] = std::move(latest);
  }
  Json doc = Json::object();
  doc["total"] = total_;
  doc["kept_per_route"] = kErrorsKeptPerRoute;
  doc["routes"] = std::move(routes);
  return doc;
}

}  // namespace valve
