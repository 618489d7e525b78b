#include "shim.h"

#include <signal.h>
#include <stddef.h>

#include "_cgo_export.h"

void valve_go_signals_onstack(void) {
  static const int signals[] = {SIGCHLD, SIGINT, SIGTERM};
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; ++i) {
    struct sigaction sa;
    if (sigaction(signals[i], NULL, &sa) != 0) continue;
    if (sa.sa_handler == SIG_DFL || sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_ONSTACK)) continue;
    sa.sa_flags |= SA_ONSTACK;
    sigaction(signals[i], &sa, NULL);
  }
}

void valve_go_signal_flags(int signum, int *handled, int *onstack) {
  struct sigaction sa;
  *handled = *onstack = 0;
  if (sigaction(signum, NULL, &sa) != 0) return;
  *handled = sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN;
  *onstack = (sa.sa_flags & SA_ONSTACK) != 0;
}

/* Both run on valve's loop thread, which installed those handlers and forked the workers (so
 * their SIGCHLD lands there first): fix the handlers before Go code runs on this thread. */
static void on_event(void *user_data, const char *json) {
  valve_go_signals_onstack();
  valveGoEvent((uintptr_t)user_data, (char *)json);
}

static void on_log(void *user_data, int level, const char *line) {
  valve_go_signals_onstack();
  valveGoLog((uintptr_t)user_data, level, (char *)line);
}

static void on_destroy(void *user_data) { valveGoRelease((uintptr_t)user_data); }

int valve_go_set_callbacks(valve_config_t *cfg, uintptr_t h, int events, int logs) {
  int rc = 0;
  if (events) rc = valve_config_set_event_callback(cfg, on_event, (void *)h, on_destroy);
  if (logs) {
    if (rc == 0)
      rc = valve_config_set_log_callback(cfg, on_log, (void *)h, on_destroy);
    else
      on_destroy((void *)h); /* the reference the log callback would have held */
  }
  return rc;
}
