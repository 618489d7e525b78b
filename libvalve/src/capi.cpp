// The C ABI: argument checks, exception barriers and error codes only; the logic lives elsewhere.
#include "valve/valve.h"

#include <uv.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "config.hpp"
#include "server.hpp"

namespace {

// Owns a host's callback; destroy(user_data) runs when the last holder goes.
template <typename Fn>
struct Callback {
  Fn cb = nullptr;
  void *user_data = nullptr;
  void (*destroy)(void *) = nullptr;
  ~Callback() {
    if (destroy) destroy(user_data);
  }
};
using LogTarget = Callback<valve_log_cb>;
using EventTarget = Callback<valve_event_cb>;

// Runs f, turning any exception into an error code (and a message in *error).
template <typename F>
int guarded(std::string *error, F &&f) {
  try {
    return f();
  } catch (const std::bad_alloc &) {
    if (error) *error = "out of memory";
    return VALVE_ENOMEM;
  } catch (const std::exception &e) {
    if (error) *error = e.what();
    return VALVE_EINTERNAL;
  } catch (...) {
    if (error) *error = "unknown internal error";
    return VALVE_EINTERNAL;
  }
}

}  // namespace

struct valve_config {
  valve::Config cfg;
  std::shared_ptr<LogTarget> log;
  std::shared_ptr<EventTarget> events;
  std::string error;
  std::string value;
};

namespace {

// Replaces a config's callback (none when cb is NULL). destroy(user_data) runs when the last
// server using it is freed, or at once if the callback is replaced, cleared or this call fails.
template <typename Fn>
int set_callback(valve_config_t *cfg, std::shared_ptr<Callback<Fn>> valve_config::*slot, Fn cb,
                 void *user_data, void (*destroy)(void *)) {
  if (!cfg) {
    if (destroy) destroy(user_data);
    return VALVE_EINVALID;
  }
  int rc = guarded(&cfg->error, [&] {
    auto target = std::make_shared<Callback<Fn>>();
    target->cb = cb;
    target->user_data = user_data;
    target->destroy = destroy;
    cfg->*slot = cb ? std::move(target) : nullptr;
    return 0;
  });
  if (rc != 0 && destroy) destroy(user_data);
  return rc;
}

}  // namespace

struct valve_server {
  std::shared_ptr<LogTarget> log;  // declared first: they outlive the server that calls them
  std::shared_ptr<EventTarget> events;
  std::unique_ptr<valve::Server> server;
  std::string error;
};

extern "C" {

const char *valve_err_name(int err) {
  switch (err) {
#define VALVE_ERR_NAME_(name, code, text) \
  case code:                              \
    return "VALVE_E" #name;
    VALVE_ERRNO_MAP(VALVE_ERR_NAME_)
#undef VALVE_ERR_NAME_
    default:
      break;
  }
  static thread_local char buf[64];
  return uv_err_name_r(err, buf, sizeof buf);
}

const char *valve_strerror(int err) {
  switch (err) {
#define VALVE_ERR_TEXT_(name, code, text) \
  case code:                              \
    return text;
    VALVE_ERRNO_MAP(VALVE_ERR_TEXT_)
#undef VALVE_ERR_TEXT_
    default:
      break;
  }
  static thread_local char buf[128];
  return uv_strerror_r(err, buf, sizeof buf);
}

const char *valve_version_string(void) { return VALVE_VERSION_STRING; }

unsigned valve_version(void) { return VALVE_VERSION_HEX; }

int valve_config_new(valve_config_t **out) {
  if (!out) return VALVE_EINVALID;
  *out = nullptr;
  return guarded(nullptr, [&] {
    *out = new valve_config{};
    return 0;
  });
}

void valve_config_free(valve_config_t *cfg) { delete cfg; }

int valve_config_set(valve_config_t *cfg, const char *key, const char *value) {
  if (!cfg) return VALVE_EINVALID;
  if (!key || !value) {
    cfg->error = "valve_config_set: key and value must not be NULL";
    return VALVE_EINVALID;
  }
  return guarded(&cfg->error, [&] {
    if (auto err = cfg->cfg.set(key, value)) {
      cfg->error = *err;
      return static_cast<int>(VALVE_EINVALID);
    }
    cfg->error.clear();
    return 0;
  });
}

const char *valve_config_get(valve_config_t *cfg, const char *key) {
  if (!cfg || !key) return nullptr;
  try {
    auto v = cfg->cfg.get(key);
    if (!v) return nullptr;
    cfg->value = *v;
    return cfg->value.c_str();
  } catch (...) {
    return nullptr;
  }
}

const char *valve_config_key(size_t index) { return valve::option_key(index); }

const char *valve_config_describe(const char *key) {
  if (!key) return nullptr;
  try {
    return valve::option_help(key);
  } catch (...) {
    return nullptr;
  }
}

const char *valve_config_default(const char *key) {
  return key ? valve::option_default(key) : nullptr;
}

const char *valve_config_last_error(const valve_config_t *cfg) {
  return cfg ? cfg->error.c_str() : "";
}

int valve_config_set_log_callback(valve_config_t *cfg, valve_log_cb cb, void *user_data,
                                  void (*destroy)(void *)) {
  return set_callback(cfg, &valve_config::log, cb, user_data, destroy);
}

int valve_config_set_event_callback(valve_config_t *cfg, valve_event_cb cb, void *user_data,
                                    void (*destroy)(void *)) {
  return set_callback(cfg, &valve_config::events, cb, user_data, destroy);
}

int valve_server_new(valve_server_t **out, valve_config_t *cfg) {
  if (!out) return VALVE_EINVALID;
  *out = nullptr;
  if (!cfg) return VALVE_EINVALID;
  return guarded(&cfg->error, [&] {
    if (auto err = cfg->cfg.validate()) {
      cfg->error = *err;
      return static_cast<int>(VALVE_EINVALID);
    }
    auto sv = std::make_unique<valve_server>();
    sv->log = cfg->log;
    sv->events = cfg->events;
    valve::Hooks hooks;
    if (sv->log) hooks.log = sv->log->cb, hooks.log_data = sv->log->user_data;
    if (sv->events) hooks.event = sv->events->cb, hooks.event_data = sv->events->user_data;
    sv->server = std::make_unique<valve::Server>(cfg->cfg, hooks);
    if (auto err = sv->server->check()) {
      cfg->error = *err;
      return static_cast<int>(VALVE_EINVALID);
    }
    cfg->error.clear();
    *out = sv.release();
    return 0;
  });
}

void valve_server_free(valve_server_t *sv) {
  if (!sv) return;
  try {
    sv->server.reset();
  } catch (...) {
  }
  delete sv;
}

// The outcome of a run: its message, or none.
static int run_result(valve_server_t *sv, int rc) {
  sv->error = rc == 0 ? std::string() : sv->server->last_error();
  if (rc != 0 && sv->error.empty()) sv->error = valve_strerror(rc);
  return rc;
}

int valve_server_run(valve_server_t *sv) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] { return run_result(sv, sv->server->run()); });
}

int valve_server_start(valve_server_t *sv) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] { return run_result(sv, sv->server->start_background()); });
}

int valve_server_stop(valve_server_t *sv, double deadline_seconds) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] {
    sv->server->stop(deadline_seconds);
    return 0;
  });
}

int valve_server_wait(valve_server_t *sv) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] { return run_result(sv, sv->server->wait()); });
}

int valve_server_reload(valve_server_t *sv) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] { return sv->server->reload(&sv->error); });
}

int valve_server_scale(valve_server_t *sv, unsigned n_min, unsigned n_max) {
  if (!sv) return VALVE_EINVALID;
  return guarded(&sv->error, [&] { return sv->server->scale(n_min, n_max, &sv->error); });
}

int valve_server_status(valve_server_t *sv, char **json_out) {
  if (!sv || !json_out) return VALVE_EINVALID;
  *json_out = nullptr;
  return guarded(&sv->error, [&] {
    std::string json = sv->server->status_json();
    *json_out = strdup(json.c_str());
    return *json_out ? 0 : static_cast<int>(VALVE_ENOMEM);
  });
}

int valve_server_address(valve_server_t *sv, char *buf, size_t len) {
  if (!sv || !buf || len == 0) return VALVE_EINVALID;
  return guarded(&sv->error, [&] {
    std::string addr = sv->server->address();
    if (addr.empty()) {
      sv->error = "the server is not listening";
      return static_cast<int>(VALVE_ESTATE);
    }
    size_t n = std::min(len - 1, addr.size());
    memcpy(buf, addr.data(), n);
    buf[n] = 0;
    return 0;
  });
}

const char *valve_server_last_error(valve_server_t *sv) { return sv ? sv->error.c_str() : ""; }

void valve_free(void *ptr) { free(ptr); }

}  // extern "C"
