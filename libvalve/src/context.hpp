// What every part below the server shares: the loop, deferred calls, counters, the log, events and
// the runtime directory. The server owns one and hands it down; nothing below the server includes
// server.hpp, and notices go back up through narrow interfaces (Pool::Observer, Proxy::Host, ...).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"
#include "log.hpp"
#include "stats.hpp"

namespace valve {

class ErrorReports;

using EventSink = void (*)(void *user_data, const char *event_json);

// Calls run on the loop thread after the current callback has returned (from a check handle, with
// an idle handle keeping the loop from blocking meanwhile). A call posted for an owner is dropped
// by cancel(owner): an object that goes away takes its pending calls with it.
class Deferred {
 public:
  explicit Deferred(uv_loop_t *loop) : loop_(loop) {}
  ~Deferred();
  Deferred(const Deferred &) = delete;
  Deferred &operator=(const Deferred &) = delete;

  // Makes the handles that run the calls; until then (and after close) they run only from run().
  void start();
  void close();
  void post(std::function<void()> fn, const void *owner = nullptr);
  void cancel(const void *owner);
  // Runs every call posted, those they post included.
  void run();
  bool empty() const { return calls_.empty(); }

 private:
  struct Call {
    const void *owner;
    std::function<void()> fn;
  };
  uv_loop_t *loop_;
  uv_check_t *check_ = nullptr;
  uv_idle_t *idle_ = nullptr;
  std::vector<Call> calls_;
  std::vector<Call> *running_ = nullptr;  // the batch run() is in: cancel() reaches it too
};

// An object's own deferred calls, cancelled when it is destroyed.
class DeferredCalls {
 public:
  explicit DeferredCalls(Deferred &deferred) : deferred_(deferred) {}
  ~DeferredCalls() { deferred_.cancel(this); }
  DeferredCalls(const DeferredCalls &) = delete;
  DeferredCalls &operator=(const DeferredCalls &) = delete;

  void post(std::function<void()> fn) { deferred_.post(std::move(fn), this); }

 private:
  Deferred &deferred_;
};

class Context {
 public:
  // config: the server's options, which outlive the context.
  Context(uv_loop_t *loop, const Config &config, Logger log, EventSink events, void *events_data);
  ~Context();
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;

  uv_loop_t *loop() const { return loop_; }
  const Config &config() const { return config_; }
  const Logger &log() const { return log_; }
  Stats &stats() { return stats_; }
  const Stats &stats() const { return stats_; }
  AccessLog &access_log() { return access_log_; }
  // Each worker's 5xx with what the worker printed (error_reports.hpp).
  ErrorReports &errors() { return *errors_; }
  Deferred &deferred() { return deferred_; }

  // Runs fn on the loop thread soon, after the current callback has returned.
  void defer(std::function<void()> fn) { deferred_.post(std::move(fn)); }
  template <typename T>
  void defer_delete(T *p) {
    defer([p] { delete p; });
  }
  // Takes p out of the list that owns it, deleting it after the current callback has returned.
  template <typename T>
  void defer_erase(std::list<std::unique_ptr<T>> &owners, T *p) {
    for (auto it = owners.begin(); it != owners.end(); ++it) {
      if (it->get() == p) {
        defer_delete(it->release());
        owners.erase(it);
        return;
      }
    }
  }

  bool wants_events() const { return events_ != nullptr; }
  // Hands one event (a JSON object) to the host, if it asked for events.
  void emit(const std::string &event_json) const;

  // The private directory of worker sockets and scripts, once the server has made it.
  const std::string &runtime_dir() const { return runtime_dir_; }
  void set_runtime_dir(std::string dir) { runtime_dir_ = std::move(dir); }
  uint64_t next_worker_id() { return next_worker_id_++; }
  // Whether a config file defines the apps: log lines and answers then name their app.
  bool names_apps() const { return names_apps_; }
  void set_names_apps(bool names) { names_apps_ = names; }
  // Shutting down: no retries, no keep-alive, no reloads.
  bool stopping() const { return stopping_; }
  void set_stopping() { stopping_ = true; }

 private:
  uv_loop_t *loop_;
  const Config &config_;
  Logger log_;
  Stats stats_;
  AccessLog access_log_;
  std::unique_ptr<ErrorReports> errors_;
  Deferred deferred_;
  EventSink events_;
  void *events_data_;
  std::string runtime_dir_;
  uint64_t next_worker_id_ = 1;
  bool names_apps_ = false;
  bool stopping_ = false;
};

}  // namespace valve
