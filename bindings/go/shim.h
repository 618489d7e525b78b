/* C side of the Go binding: trampolines between valve's callbacks and the exported Go functions
 * (cgo forbids definitions in a preamble that sits beside //export). */
#ifndef VALVE_GO_SHIM_H
#define VALVE_GO_SHIM_H

#include <stdint.h>
#include <valve/valve.h>

/* Registers the event and/or log trampolines on cfg, both carrying the cgo.Handle h. Each one's
 * destroy releases one reference to h, also when registration fails. */
int valve_go_set_callbacks(valve_config_t *cfg, uintptr_t h, int events, int logs);

/* Adds SA_ONSTACK to the handlers libuv installs without it, for SIGCHLD (option reap-orphans)
 * and SIGINT and SIGTERM (handle-signals): Go requires it of non-Go handlers, as a signal handled
 * on a goroutine's small stack may overflow it. Handlers that have it already are left alone. */
void valve_go_signals_onstack(void);

/* For the tests: whether signum has a handler (not SIG_DFL or SIG_IGN), and with SA_ONSTACK. */
void valve_go_signal_flags(int signum, int *handled, int *onstack);

#endif
