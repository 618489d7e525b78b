/* valve: a supervisor and reverse proxy for pools of R plumber workers.
 *
 * This is the one public header. It is pure C99: opaque handles, create/free pairs, configuration
 * through string setters, int results (0 on success, a negative code on failure).
 *
 * Threading: every function may be called from any thread. A server's state is owned by its loop
 * thread; calls from other threads are posted to it. Callbacks run on the loop thread.
 */
#ifndef VALVE_VALVE_H
#define VALVE_VALVE_H

#include <stddef.h>

#include "valve/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(VALVE_BUILDING) && defined(__GNUC__)
#define VALVE_API __attribute__((visibility("default")))
#else
#define VALVE_API
#endif

/* valve's own error codes. libuv's codes (negative errno values) are passed through as they are;
 * valve's codes live below -10000 so the two never collide. */
/* clang-format off */
#define VALVE_ERRNO_MAP(XX)                                                                        \
  XX(INVALID, -10001, "invalid argument or configuration value")                                  \
  XX(STATE, -10002, "operation not allowed in the server's current state")                        \
  XX(STARTUP, -10003, "no worker became ready")                                                   \
  XX(NOMEM, -10004, "out of memory")                                                              \
  XX(INTERNAL, -10005, "internal error")                                                          \
  XX(CONFIG, -10006, "the worker environment is unusable (R or plumber missing)")
/* clang-format on */

typedef enum {
#define VALVE_ERR_ENUM_(name, code, text) VALVE_E##name = code,
  VALVE_ERRNO_MAP(VALVE_ERR_ENUM_)
#undef VALVE_ERR_ENUM_
      VALVE_E_LAST_ = -10006
} valve_errno_t;

/* The symbolic name of an error code ("VALVE_EINVALID", "EADDRINUSE"); never NULL. */
VALVE_API const char *valve_err_name(int err);
/* A human-readable description of an error code; never NULL. */
VALVE_API const char *valve_strerror(int err);

/* The runtime library version as "MAJOR.MINOR.PATCH", and as the number
 * MAJOR*10000+MINOR*100+PATCH. */
VALVE_API const char *valve_version_string(void);
VALVE_API unsigned valve_version(void);

/* ---- Configuration ------------------------------------------------------------------------ */

typedef struct valve_config valve_config_t;

/* Creates a configuration holding every default. */
VALVE_API int valve_config_new(valve_config_t **out);
/* Frees a configuration; NULL is a no-op. A server copies its configuration, so the config may be
 * freed as soon as valve_server_new() returns. */
VALVE_API void valve_config_free(valve_config_t *cfg);

/* Sets one option by its name, the same name as valvectl's long flag without the dashes
 * ("port", "n-max", "file", "timeout", ...). The value is parsed and range-checked at once.
 * A list option ("env") appends each value set, as a repeated flag does; setting "" empties it.
 * Returns 0, or VALVE_EINVALID with a message naming the key and the value in
 * valve_config_last_error(). */
VALVE_API int valve_config_set(valve_config_t *cfg, const char *key, const char *value);
/* The current value of an option, formatted as valve_config_set() accepts it (a list option's
 * values one a line); NULL if the key is unknown. The pointer stays valid until the next call on cfg. */
VALVE_API const char *valve_config_get(valve_config_t *cfg, const char *key);
/* Names of every option, in documentation order: index 0.. until NULL. */
VALVE_API const char *valve_config_key(size_t index);
/* One line describing an option and its default, for help texts; NULL if the key is unknown. */
VALVE_API const char *valve_config_describe(const char *key);
/* An option's default as the option table writes it ("16k", "plumber.R"; "" when it has none),
 * for documentation; NULL if the key is unknown. Static storage: never freed. */
VALVE_API const char *valve_config_default(const char *key);
/* The message of the last failed call on cfg ("" if none). Valid until the next call on cfg. */
VALVE_API const char *valve_config_last_error(const valve_config_t *cfg);

/* Log lines from the server (valve's own and its workers' output). level: 0 debug, 1 info,
 * 2 warn, 3 error. Without a callback, lines go to stderr. Runs on the loop thread. */
typedef void (*valve_log_cb)(void *user_data, int level, const char *line);
/* destroy(user_data) runs once when the last server using the callback is freed, or at once if
 * this call fails. */
VALVE_API int valve_config_set_log_callback(valve_config_t *cfg, valve_log_cb cb, void *user_data,
                                            void (*destroy)(void *user_data));

/* Events, as one JSON object each, for hosts that watch the pool:
 *   {"event":"worker_launched","worker":3,"pid":1234,"forked":false}  (true: forked by --preload)
 *   {"event":"worker_ready","worker":3,"pid":1234,"startup_ms":512}
 *   {"event":"worker_exited","worker":3,"pid":1234,"status":"exited with status 0","expected":true}
 *   {"event":"request_completed","request_id":"...","method":"GET","target":"/echo","status":200,
 *    "worker":3,"duration_ms":12.5}
 * The string is valid only during the call. Runs on the loop thread: it must not block, and must
 * not call valve_server_free(). destroy(user_data) runs as for valve_config_set_log_callback(). */
typedef void (*valve_event_cb)(void *user_data, const char *event_json);
VALVE_API int valve_config_set_event_callback(valve_config_t *cfg, valve_event_cb cb,
                                              void *user_data, void (*destroy)(void *user_data));

/* ---- Server ------------------------------------------------------------------------------- */

typedef struct valve_server valve_server_t;

/* Creates a server from a copy of cfg and checks it against the environment (the API file exists,
 * R can be found). Nothing is started. On failure *out is NULL and, if cfg is not NULL, the
 * message is in valve_config_last_error(cfg). */
VALVE_API int valve_server_new(valve_server_t **out, valve_config_t *cfg);
/* Stops the server if it runs (as valve_server_stop with a zero deadline), then frees it. NULL is
 * a no-op. Must not be called from a callback. */
VALVE_API void valve_server_free(valve_server_t *sv);

/* Runs the server on the calling thread until it stops. Returns 0 after a clean stop, or an error:
 * UV_EADDRINUSE and friends when the listener cannot bind, VALVE_ESTARTUP when no worker ever
 * became ready, VALVE_ECONFIG when R or plumber is missing. */
VALVE_API int valve_server_run(valve_server_t *sv);
/* Starts the server on a background thread and returns once it listens and its first worker is
 * ready (or start-up failed, with the same codes as valve_server_run). */
VALVE_API int valve_server_start(valve_server_t *sv);
/* Asks the server to stop: it stops accepting, lets in-flight requests finish for up to
 * deadline_seconds (negative: the configured graceful-timeout), then ends its workers. Returns at
 * once; valve_server_wait() waits for the end. Safe from any thread and from callbacks. */
VALVE_API int valve_server_stop(valve_server_t *sv, double deadline_seconds);
/* Waits until a server started with valve_server_start() has stopped; returns its result. */
VALVE_API int valve_server_wait(valve_server_t *sv);

/* Reloads without dropping a request: starts a new generation of workers (re-reading the API
 * file), moves traffic to it once it is ready, and drains the old one. Blocks until the new
 * generation serves (0) or failed to start (VALVE_ESTARTUP, with the reason and the failing
 * worker's last output in valve_server_last_error(); the old generation keeps serving).
 * VALVE_ESTATE if the server is not running. Called on the loop thread (from a callback) it starts
 * the reload and returns 0 at once. */
VALVE_API int valve_server_reload(valve_server_t *sv);
/* Sets the running pool's n-min and n-max: workers above n-max drain and stop, workers up to
 * n-min are launched. Returns 0, VALVE_EINVALID (n_min > n_max, n_max 0; the message in
 * valve_server_last_error()) or VALVE_ESTATE if the server is not running. */
VALVE_API int valve_server_scale(valve_server_t *sv, unsigned n_min, unsigned n_max);

/* A JSON snapshot of the server: listener, workers, queue, configuration. The caller frees
 * *json_out with valve_free(). */
VALVE_API int valve_server_status(valve_server_t *sv, char **json_out);
/* The address the server listens on, "host:port" (the real port when port 0 was asked). Written
 * into buf (NUL-terminated, truncated to len). */
VALVE_API int valve_server_address(valve_server_t *sv, char *buf, size_t len);
/* The message of the last failure on sv ("" if none). Valid until the next call on sv. */
VALVE_API const char *valve_server_last_error(valve_server_t *sv);

/* Frees memory that valve returned to the caller. NULL is a no-op. */
VALVE_API void valve_free(void *ptr);

#ifdef __cplusplus
}
#endif

#endif /* VALVE_VALVE_H */
