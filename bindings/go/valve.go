// Package valve runs a pool of R plumber workers behind one HTTP address, in-process, through
// libvalve's C API (valve/valve.h).
//
//	srv, err := valve.New(valve.File("plumber.R"), valve.Port(0), valve.NMax(4))
//	if err != nil { ... }
//	defer srv.Close()
//	if err := srv.Start(ctx); err != nil { ... }
//	fmt.Println("serving on http://" + srv.Addr())
//	...
//	err = srv.Stop(ctx)
//
// Every option of valvectl can be set by its long name with Set or Options. A Server's methods
// may be called from any goroutine.
package valve

/*
#cgo LDFLAGS: -lvalve
#include <stdlib.h>
#include <valve/valve.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"runtime/cgo"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Version is the version of the libvalve in use, "MAJOR.MINOR.PATCH".
func Version() string { return C.GoString(C.valve_version_string()) }

// Keys lists the name of every option, in documentation order.
func Keys() []string {
	var keys []string
	for i := 0; ; i++ {
		k := C.valve_config_key(C.size_t(i))
		if k == nil {
			return keys
		}
		keys = append(keys, C.GoString(k))
	}
}

// Describe is a one-line description of an option and its default; "" for an unknown key.
func Describe(key string) string {
	ck := C.CString(key)
	defer C.free(unsafe.Pointer(ck))
	return C.GoString(C.valve_config_describe(ck))
}

// An Option configures a Server in New.
type Option interface {
	apply(*builder) error
}

type builder struct {
	cfg     *C.valve_config_t
	onEvent func(Event)
	onLog   func(LogLevel, string)
}

type optionFunc func(*builder) error

func (f optionFunc) apply(b *builder) error { return f(b) }

// Set sets one option by the name of valvectl's long flag ("port", "n-max", "timeout", ...; see
// Keys) to a value as valvectl accepts it ("0", "4", "250ms", "true"). A key that does not exist
// or a value out of range makes New fail with an ErrInvalid that names the key.
func Set(key, value string) Option {
	return optionFunc(func(b *builder) error {
		ck, cv := C.CString(key), C.CString(value)
		defer C.free(unsafe.Pointer(ck))
		defer C.free(unsafe.Pointer(cv))
		if rc := C.valve_config_set(b.cfg, ck, cv); rc != 0 {
			return codeError(rc, C.GoString(C.valve_config_last_error(b.cfg)))
		}
		return nil
	})
}

// Options sets several options at once, by key as Set does, in sorted key order.
type Options map[string]string

func (o Options) apply(b *builder) error {
	keys := make([]string, 0, len(o))
	for k := range o {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := Set(k, o[k]).apply(b); err != nil {
			return err
		}
	}
	return nil
}

// Env sets a variable in the workers' environment (option "env", which collects every value);
// workers get only these, the env-file's and a few basics such as PATH and HOME.
func Env(name, value string) Option { return Set("env", name+"="+value) }

// User runs the workers as this user, by name or uid (option "user"; valve must run as root).
func User(name string) Option { return Set("user", name) }

// AllowRoot lets workers run as root when valve does (option "allow-root"); without it, and
// without User, New refuses when running as root.
func AllowRoot() Option { return Set("allow-root", "true") }

// File is the plumber API file each worker serves (option "file").
func File(path string) Option { return Set("file", path) }

// Cmd runs this shell command as a worker instead of plumber; it must contain {port} or
// {socket} (option "cmd").
func Cmd(command string) Option { return Set("cmd", command) }

// Host is the address to listen on (option "host", default 127.0.0.1).
func Host(host string) Option { return Set("host", host) }

// Port is the port to listen on; 0 picks a free one, see Server.Addr (option "port").
func Port(port int) Option { return Set("port", strconv.Itoa(port)) }

// NMin is the fewest workers kept running, even when idle (option "n-min").
func NMin(n int) Option { return Set("n-min", strconv.Itoa(n)) }

// NMax is the most workers run at once (option "n-max").
func NMax(n int) Option { return Set("n-max", strconv.Itoa(n)) }

// OnEvent has fn called with each of the pool's events (workers launched, ready and exited,
// requests completed, reloads). Calls come one at a time, in order, from a goroutine of the
// Server's own, never from valve's event loop, so a slow fn delays later events but never valve.
// Close returns once every event has been handed to fn, so fn must not call Close itself.
func OnEvent(fn func(Event)) Option {
	return optionFunc(func(b *builder) error { b.onEvent = fn; return nil })
}

// OnLog has fn receive valve's log lines (its own and its workers' output) instead of stderr,
// from the same goroutine and queue as OnEvent's events. "log-level" chooses which lines come.
func OnLog(fn func(level LogLevel, line string)) Option {
	return optionFunc(func(b *builder) error { b.onLog = fn; return nil })
}

// Server is a pool of workers behind one listening address. Create it with New; free it with
// Close.
type Server struct {
	// mu guards sv: every use holds a read lock for as long as the C call runs (blocking ones
	// included); Close takes the write lock to free it.
	mu      sync.RWMutex
	sv      *C.valve_server_t
	errMu   sync.Mutex  // valve_server_last_error's buffer is per handle: one reader at a time
	stopped atomic.Bool // Stop or Close was called: Start must not begin (valve would run a queued stop)
	disp    *dispatcher // nil without OnEvent and OnLog
}

// New creates a server from the options and checks it against the environment (the API file
// exists, R can be found). Nothing starts until Start or Run.
func New(opts ...Option) (*Server, error) {
	b := &builder{}
	if rc := C.valve_config_new(&b.cfg); rc != 0 {
		return nil, codeError(rc, "")
	}
	defer C.valve_config_free(b.cfg)
	for _, o := range opts {
		if err := o.apply(b); err != nil {
			return nil, err
		}
	}
	s := &Server{}
	if b.onEvent != nil || b.onLog != nil {
		d := newDispatcher(b.onEvent, b.onLog)
		events, logs := C.int(0), C.int(0)
		if b.onEvent != nil {
			events, d.refs = 1, d.refs+1
		}
		if b.onLog != nil {
			logs, d.refs = 1, d.refs+1
		}
		// From here on the handle belongs to valve: its destroy callbacks release it, even when
		// registration or valve_server_new fails (through valve_config_free).
		h := cgo.NewHandle(d)
		if rc := C.valve_go_set_callbacks(b.cfg, C.uintptr_t(h), events, logs); rc != 0 {
			return nil, codeError(rc, C.GoString(C.valve_config_last_error(b.cfg)))
		}
		s.disp = d
	}
	if rc := C.valve_server_new(&s.sv, b.cfg); rc != 0 {
		return nil, codeError(rc, C.GoString(C.valve_config_last_error(b.cfg)))
	}
	return s, nil
}

func errClosed() error { return codeError(C.VALVE_ESTATE, "the server is closed") }

// with runs fn on the server handle under a read lock.
func (s *Server) with(fn func(sv *C.valve_server_t) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.sv == nil {
		return errClosed()
	}
	return fn(s.sv)
}

// background runs a blocking call in a goroutine that holds a read lock until the call returns,
// so Close cannot free the handle under it even when the caller has stopped waiting.
func (s *Server) background(call func(sv *C.valve_server_t) C.int) (<-chan C.int, error) {
	s.mu.RLock()
	if s.sv == nil {
		s.mu.RUnlock()
		return nil, errClosed()
	}
	sv := s.sv
	result := make(chan C.int, 1)
	go func() {
		defer s.mu.RUnlock()
		result <- call(sv)
	}()
	return result, nil
}

// resultError turns a start or wait result into an error, with the server's own message.
func (s *Server) resultError(rc C.int) error {
	if rc == 0 {
		return nil
	}
	message := ""
	_ = s.with(func(sv *C.valve_server_t) error {
		s.errMu.Lock()
		message = C.GoString(C.valve_server_last_error(sv))
		s.errMu.Unlock()
		return nil
	})
	return codeError(rc, message)
}

// Start starts the server on a thread of its own and returns once it listens and its first
// worker is ready. If ctx ends first, the server is stopped and Start returns an error that
// wraps ctx.Err(). Start fails with ErrState on a server that was started or stopped before.
func (s *Server) Start(ctx context.Context) error {
	if s.stopped.Load() {
		return codeError(C.VALVE_ESTATE, "the server was stopped")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("valve: start cancelled: %w", err)
	}
	result, err := s.background(func(sv *C.valve_server_t) C.int { return C.valve_server_start(sv) })
	if err != nil {
		return err
	}
	select {
	case rc := <-result:
		C.valve_go_signals_onstack() // see shim.h: valve's signal handlers are in place by now
		if rc == 0 && s.stopped.Load() {
			return codeError(C.VALVE_ESTATE, "the server was stopped while it started")
		}
		return s.resultError(rc)
	case <-ctx.Done():
		_ = s.with(func(sv *C.valve_server_t) error { C.valve_server_stop(sv, 0); return nil })
		<-result
		C.valve_go_signals_onstack()
		if ended, err := s.background(func(sv *C.valve_server_t) C.int { return C.valve_server_wait(sv) }); err == nil {
			<-ended // no worker outlives a cancelled Start
		}
		return fmt.Errorf("valve: start cancelled: %w", ctx.Err())
	}
}

// Stop stops the server gracefully: it stops accepting, lets requests in progress finish until
// ctx's deadline (without one, for the configured "graceful-timeout"), ends the workers and
// returns once the server has stopped, with the error that ended it if any. If ctx ends first,
// the remaining requests are cut off at once and Stop returns ctx.Err() without waiting further;
// Close waits for the end. Stop on a stopped server returns at once.
func (s *Server) Stop(ctx context.Context) error {
	s.stopped.Store(true)
	deadline := -1.0
	if d, ok := ctx.Deadline(); ok {
		deadline = time.Until(d).Seconds()
		if deadline < 0 {
			deadline = 0
		}
	}
	if err := s.with(func(sv *C.valve_server_t) error {
		if rc := C.valve_server_stop(sv, C.double(deadline)); rc != 0 {
			return codeError(rc, "")
		}
		return nil
	}); err != nil {
		return err
	}
	return s.wait(ctx)
}

// wait waits for the server's end; if ctx ends first, it stops the server at once and returns.
func (s *Server) wait(ctx context.Context) error {
	result, err := s.background(func(sv *C.valve_server_t) C.int { return C.valve_server_wait(sv) })
	if err != nil {
		return err
	}
	select {
	case rc := <-result:
		return s.resultError(rc)
	case <-ctx.Done():
		_ = s.with(func(sv *C.valve_server_t) error { C.valve_server_stop(sv, 0); return nil })
		return ctx.Err()
	}
}

// Run starts the server and serves until ctx ends, then stops it gracefully (within the
// configured "graceful-timeout"). It returns nil after a clean stop, whether ctx ended it or Stop
// was called; otherwise the error that ended the server.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	result, err := s.background(func(sv *C.valve_server_t) C.int { return C.valve_server_wait(sv) })
	if err != nil {
		return err
	}
	select {
	case rc := <-result:
		return s.resultError(rc)
	case <-ctx.Done():
		s.stopped.Store(true)
		_ = s.with(func(sv *C.valve_server_t) error { C.valve_server_stop(sv, -1); return nil })
		return s.resultError(<-result)
	}
}

// Reload reloads without dropping a request: it starts a new generation of workers (re-reading
// the API file), moves traffic to it once it is ready, drains the old one, and returns nil once
// the new generation serves. If it fails to start, Reload returns an ErrStartup whose message
// holds the reason and the failing worker's last output, and the old generation keeps serving;
// on a server that is not running it returns ErrState. valve cannot cancel a reload: ctx only
// bounds the wait. If ctx ends first, Reload returns an error that wraps ctx.Err() while the
// reload goes on; its outcome comes as an EventReload event and in Status().Reload, and Close
// waits for it to end.
func (s *Server) Reload(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("valve: reload not started: %w", err)
	}
	result, err := s.background(func(sv *C.valve_server_t) C.int { return C.valve_server_reload(sv) })
	if err != nil {
		return err
	}
	select {
	case rc := <-result:
		return s.resultError(rc)
	case <-ctx.Done():
		return fmt.Errorf("valve: stopped waiting for the reload (it goes on): %w", ctx.Err())
	}
}

// Scale sets the running pool's "n-min" and "n-max": workers above nMax drain and stop, workers
// up to nMin are launched. It returns ErrInvalid if nMin > nMax or nMax is 0 (the message names
// the value at fault: "n-min 3: must be at most n-max (2)"), ErrState if the server is not
// running.
func (s *Server) Scale(nMin, nMax uint) error {
	for _, v := range []struct {
		key string
		n   uint
	}{{"n-min", nMin}, {"n-max", nMax}} {
		if uint64(v.n) > math.MaxUint32 {
			return codeError(C.VALVE_EINVALID,
				fmt.Sprintf("%s %d: must be at most %d", v.key, v.n, uint64(math.MaxUint32)))
		}
	}
	return s.with(func(sv *C.valve_server_t) error {
		if rc := C.valve_server_scale(sv, C.unsigned(nMin), C.unsigned(nMax)); rc != 0 {
			s.errMu.Lock()
			defer s.errMu.Unlock()
			return codeError(rc, C.GoString(C.valve_server_last_error(sv)))
		}
		return nil
	})
}

// Addr is the address the server listens on, "host:port" with the real port when port 0 was
// asked; "" before it listens.
func (s *Server) Addr() string {
	var addr string
	_ = s.with(func(sv *C.valve_server_t) error {
		var buf [256]C.char
		if C.valve_server_address(sv, &buf[0], C.size_t(len(buf))) == 0 {
			addr = C.GoString(&buf[0])
		}
		return nil
	})
	return addr
}

// Status is a snapshot of a server.
type Status struct {
	Version            string         `json:"version"`
	State              string         `json:"state"` // "created", "starting", "running", "stopping", "stopped"
	Address            string         `json:"address"`
	PID                int            `json:"pid"`
	Generation         int            `json:"generation"` // 1, then one more per reload
	Reload             ReloadStatus   `json:"reload"`
	Workers            []WorkerStatus `json:"workers"`
	Queue              int            `json:"queue"` // requests waiting for a worker
	RequestsInProgress int            `json:"requests_in_progress"`
	Connections        int            `json:"connections"`
	Config             map[string]any `json:"config"` // every option, by key
	JSON               string         `json:"-"`      // the snapshot exactly as valve sent it
}

// ReloadStatus is the state of the last reload in a Status.
type ReloadStatus struct {
	State      string `json:"state"` // "none", "in_progress", "done", "failed"
	Generation int    `json:"generation"`
	Error      string `json:"error"` // why it failed
}

// WorkerStatus is one worker in a Status.
type WorkerStatus struct {
	ID          int     `json:"id"`
	PID         int     `json:"pid"`
	Generation  int     `json:"generation"`
	State       string  `json:"state"` // "starting", "ready", "stopping", "exited"
	Address     string  `json:"address"`
	Requests    int64   `json:"requests"` // requests served
	InFlight    int     `json:"in_flight"`
	AgeSeconds  float64 `json:"age_s"`
	IdleSeconds float64 `json:"idle_s"`
}

// Status takes a snapshot of the server: listener, workers, queue, configuration.
func (s *Server) Status() (*Status, error) {
	var text string
	if err := s.with(func(sv *C.valve_server_t) error {
		var out *C.char
		if rc := C.valve_server_status(sv, &out); rc != 0 {
			return codeError(rc, "")
		}
		defer C.valve_free(unsafe.Pointer(out))
		text = C.GoString(out)
		return nil
	}); err != nil {
		return nil, err
	}
	st := &Status{JSON: text}
	if err := json.Unmarshal([]byte(text), st); err != nil {
		return nil, fmt.Errorf("valve: status: %w", err)
	}
	return st, nil
}

// Close stops the server at once if it runs (requests in progress are cut off), waits for its
// end, frees it, and returns once every event and log line has been delivered. Calling Close
// again does nothing. It must not be called from an OnEvent or OnLog function.
func (s *Server) Close() error {
	s.stopped.Store(true)
	_ = s.with(func(sv *C.valve_server_t) error { C.valve_server_stop(sv, 0); return nil })
	s.mu.Lock()
	if s.sv == nil {
		s.mu.Unlock()
		return nil
	}
	C.valve_server_free(s.sv)
	s.sv = nil
	s.mu.Unlock()
	if s.disp != nil {
		<-s.disp.done
	}
	return nil
}

// signalFlags reports whether signum has a handler installed and whether that runs on the
// alternate signal stack, as Go requires (for the tests).
func signalFlags(signum syscall.Signal) (handled, onstack bool) {
	var h, o C.int
	C.valve_go_signal_flags(C.int(signum), &h, &o)
	return h != 0, o != 0
}
