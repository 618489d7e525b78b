package valve

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// children lists the processes whose parent is this test process, zombies included.
func children(t *testing.T) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue // the process has gone
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parentheses, so cut at the last ')'.
		rest := string(data[strings.LastIndexByte(string(data), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			pids = append(pids, pid)
		}
	}
	return pids
}

func requireNoChildren(t *testing.T) {
	t.Helper()
	if pids := children(t); len(pids) > 0 {
		t.Fatalf("child processes remain: %v", pids)
	}
}

var client = &http.Client{Timeout: 20 * time.Second}

func get(t *testing.T, addr, target string) (int, string) {
	t.Helper()
	resp, err := client.Get("http://" + addr + target)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", target, err)
	}
	return resp.StatusCode, string(body)
}

func helloFile(t *testing.T) string {
	t.Helper()
	src := os.Getenv("VALVE_SRC")
	if src == "" {
		src = "../.." // bindings/go in the source tree
	}
	path, err := filepath.Abs(filepath.Join(src, "examples", "hello", "plumber.R"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the hello API: %v", err)
	}
	return path
}

func backend(t *testing.T) string {
	t.Helper()
	path := os.Getenv("VALVE_BACKEND")
	if path == "" {
		if os.Getenv("VALVE_BUILD") != "" {
			t.Fatal("VALVE_BACKEND is not set, though meson runs the tests")
		}
		t.Skip("VALVE_BACKEND is not set: run through meson test")
	}
	return path + " --port {port}"
}

// logs collects log lines for failure messages.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) add(level LogLevel, line string) {
	l.mu.Lock()
	l.lines = append(l.lines, level.String()+": "+line)
	l.mu.Unlock()
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func TestKeysAndDescribe(t *testing.T) {
	keys := Keys()
	for _, want := range []string{"host", "port", "n-max", "n-min", "file", "cmd", "log-level"} {
		found := false
		for _, k := range keys {
			found = found || k == want
		}
		if !found {
			t.Errorf("Keys() = %v: no %q", keys, want)
		}
	}
	if d := Describe("port"); !strings.Contains(d, "3000") {
		t.Errorf("Describe(port) = %q, want its default 3000", d)
	}
	if d := Describe("no-such-key"); d != "" {
		t.Errorf("Describe(no-such-key) = %q, want empty", d)
	}
	if !strings.HasPrefix(Version(), "0.") {
		t.Errorf("Version() = %q", Version())
	}
}

func TestConfigErrorNamesTheKey(t *testing.T) {
	cases := []struct {
		opt  Option
		want string
	}{
		{Set("port", "abc"), `port abc: expected a whole number`},
		{Port(70000), `port 70000: must be at most 65535`},
		{Set("timeout", "soon"), `timeout soon`},
		{Set("no-such-key", "1"), `no-such-key 1: unknown option`},
		{Options{"n-max": "0"}, `n-max 0: must be at least 1`},
		{Options{"file": helloFile(t), "n-min": "5", "n-max": "2"}, `n-min 5: must be at most n-max`},
	}
	for _, c := range cases {
		srv, err := New(AllowRoot(), c.opt)
		if err == nil {
			srv.Close()
			t.Errorf("%q: New succeeded", c.want)
			continue
		}
		var ve *Error
		if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) || errors.Is(err, ErrStartup) {
			t.Errorf("%q: error %#v is not ErrInvalid", c.want, err)
			continue
		}
		if ve.Code != -10001 || ve.Name != "VALVE_EINVALID" || !strings.Contains(ve.Message, c.want) {
			t.Errorf("error %+v, want a message with %q", ve, c.want)
		}
	}
}

func TestMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nowhere", "plumber.R")
	// With a callback: its handle is released on this failure path too (twice would panic).
	srv, err := New(AllowRoot(), File(missing), OnEvent(func(Event) {}), OnLog(func(LogLevel, string) {}))
	if err == nil {
		srv.Close()
		t.Fatal("New succeeded on a missing file")
	}
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("error %v: want ErrInvalid naming %s", err, missing)
	}
}

func TestPlumberRoundTrip(t *testing.T) {
	requireNoChildren(t)
	var (
		mu     sync.Mutex
		events []Event
	)
	seen := make(chan Event, 100)
	var log logs
	srv, err := New(AllowRoot(), File(helloFile(t)), Port(0), NMax(2), OnLog(log.add), OnEvent(func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
		seen <- e
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if srv.Addr() != "" {
		t.Errorf("Addr() = %q before Start", srv.Addr())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, &log)
	}
	addr := srv.Addr()
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "127.0.0.1" || port == "0" || port == "3000" {
		t.Fatalf("Addr() = %q", addr)
	}

	code, body := get(t, addr, "/echo?msg=hi")
	var answer map[string]any
	if err := json.Unmarshal([]byte(body), &answer); err != nil || code != 200 || len(answer) != 1 || answer["msg"] != "hi" {
		t.Fatalf(`GET /echo?msg=hi: %d %q, want 200 {"msg":"hi"}`, code, body)
	}

	st, err := srv.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "running" || st.Address != addr || st.PID != os.Getpid() || st.Version != Version() {
		t.Errorf("status: %s", st.JSON)
	}
	if len(st.Workers) != 1 || st.Workers[0].State != "ready" || st.Workers[0].Requests != 1 ||
		st.Workers[0].PID <= 0 {
		t.Fatalf("status: want one ready worker that served one request: %s", st.JSON)
	}
	if st.Config["file"] != helloFile(t) || st.Config["n-max"] != float64(2) {
		t.Errorf("status config: %v", st.Config)
	}
	workerPID := st.Workers[0].PID
	if pids := children(t); len(pids) != 1 || pids[0] != workerPID {
		t.Errorf("children %v, want the worker %d", pids, workerPID)
	}

	// Events arrive on their own goroutine; request_completed may trail the response a little.
	want := map[string]bool{EventWorkerLaunched: false, EventWorkerReady: false, EventRequestCompleted: false}
	deadline := time.After(10 * time.Second)
	for !(want[EventWorkerLaunched] && want[EventWorkerReady] && want[EventRequestCompleted]) {
		select {
		case e := <-seen:
			switch e.Type {
			case EventWorkerLaunched, EventWorkerReady:
				if e.PID != workerPID || e.Worker != st.Workers[0].ID {
					t.Errorf("%s for worker %d pid %d, want %d pid %d", e.Type, e.Worker, e.PID, st.Workers[0].ID, workerPID)
				}
				if e.Type == EventWorkerReady && e.StartupMS <= 0 {
					t.Errorf("worker_ready: startup_ms %v", e.StartupMS)
				}
			case EventRequestCompleted:
				if e.Method != "GET" || e.Target != "/echo?msg=hi" || e.StatusCode != 200 ||
					e.Worker != st.Workers[0].ID || e.RequestID == "" || e.DurationMS <= 0 {
					t.Errorf("request_completed: %+v", e)
				}
			}
			want[e.Type] = true
		case <-deadline:
			t.Fatalf("events so far: %v", want)
		}
	}

	stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer stopCancel()
	if err := srv.Stop(stopCtx); err != nil {
		t.Fatalf("Stop: %v\n%s", err, &log)
	}
	requireNoChildren(t)
	if err := syscall.Kill(workerPID, 0); err != syscall.ESRCH {
		t.Errorf("the worker %d is still there: %v", workerPID, err)
	}
	if st, err := srv.Status(); err != nil || st.State != "stopped" {
		t.Errorf("status after Stop: %v %v", st, err)
	}
	if err := srv.Start(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Start after Stop: %v, want ErrState", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	// Close has delivered everything: the worker's exit came last.
	mu.Lock()
	last := events[len(events)-1]
	mu.Unlock()
	if last.Type != EventWorkerExited || last.PID != workerPID || !last.Expected || last.ExitStatus == "" {
		t.Errorf("last event: %s", last.JSON)
	}
	if !strings.Contains(log.String(), "listening on http://"+addr) {
		t.Errorf("log:\n%s", &log)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := srv.Status(); !errors.Is(err, ErrState) {
		t.Errorf("Status after Close: %v, want ErrState", err)
	}
	if srv.Addr() != "" {
		t.Errorf("Addr after Close: %q", srv.Addr())
	}
}

// The native backend as the worker: fast enough to start and stop many servers in one process.
func TestBackendStartStop20Times(t *testing.T) {
	cmd := backend(t)
	requireNoChildren(t)
	for round := 0; round < 20; round++ {
		var log logs
		srv, err := New(AllowRoot(), Cmd(cmd), Port(0), OnLog(log.add))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := srv.Start(ctx); err != nil {
			t.Fatalf("round %d: Start: %v\n%s", round, err, &log)
		}
		if code, body := get(t, srv.Addr(), "/hello"); code != 200 || body != "hello\n" {
			t.Fatalf("round %d: GET /hello: %d %q", round, code, body)
		}
		if err := srv.Stop(ctx); err != nil {
			t.Fatalf("round %d: Stop: %v\n%s", round, err, &log)
		}
		cancel()
		requireNoChildren(t)
		srv.Close()
	}
}

func TestStartCancelledByContext(t *testing.T) {
	requireNoChildren(t)
	// A worker that never answers: Start waits until ctx ends.
	srv, err := New(AllowRoot(), Cmd("exec sleep 30 # {port}"), Port(0), Set("startup-timeout", "60"),
		OnLog(func(LogLevel, string) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	began := time.Now()
	err = srv.Start(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start: %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("Start took %v after its context ended", took)
	}
	requireNoChildren(t)
}

func TestStartupFailure(t *testing.T) {
	srv, err := New(AllowRoot(), Cmd("echo giving up on {port} >&2; exit 4"), Port(0), OnLog(func(LogLevel, string) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = srv.Start(ctx)
	var ve *Error
	if !errors.Is(err, ErrStartup) || !errors.As(err, &ve) || ve.Name != "VALVE_ESTARTUP" ||
		!strings.Contains(ve.Message, "exited with status 4") {
		t.Fatalf("Start: %v, want ErrStartup naming the exit status", err)
	}
	requireNoChildren(t)
}

func TestPortInUse(t *testing.T) {
	cmd := backend(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	srv, err := New(AllowRoot(), Cmd(cmd), Port(port), OnLog(func(LogLevel, string) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = srv.Start(ctx)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "port "+strconv.Itoa(port)) {
		t.Fatalf("Start: %v, want EADDRINUSE naming the port", err)
	}
	var ve *Error
	if !errors.As(err, &ve) || ve.Name != "EADDRINUSE" {
		t.Errorf("error %+v", ve)
	}
	requireNoChildren(t)
}

func TestRunUntilContextEnds(t *testing.T) {
	cmd := backend(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ready := make(chan struct{}, 1)
	srv, err := New(AllowRoot(), Cmd(cmd), Port(0), OnLog(func(LogLevel, string) {}), OnEvent(func(e Event) {
		if e.Type == EventWorkerReady {
			ready <- struct{}{}
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx) }()
	select {
	case <-ready:
	case <-ctx.Done():
		t.Fatal("no worker became ready")
	}
	if code, _ := get(t, srv.Addr(), "/hello"); code != 200 {
		t.Fatalf("GET /hello: %d", code)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Run did not return after its context ended")
	}
	requireNoChildren(t)
}

// Stop from another goroutine while Start waits: Start does not report a running server.
func TestStopDuringStart(t *testing.T) {
	srv, err := New(AllowRoot(), Cmd("exec sleep 30 # {port}"), Port(0), OnLog(func(LogLevel, string) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- srv.Start(ctx) }()
	time.Sleep(300 * time.Millisecond)
	if err := srv.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := <-started; !errors.Is(err, ErrState) {
		t.Fatalf("Start: %v, want ErrState", err)
	}
	requireNoChildren(t)
}

// With reap-orphans and handle-signals, valve (libuv) installs handlers for SIGCHLD, SIGINT and
// SIGTERM without SA_ONSTACK, which Go requires; the binding adds it. Last: once this server
// stops, SIGCHLD is left at SIG_DFL rather than Go's handler (valve restores SIGINT and SIGTERM).
func TestSignalHandlersRunOnTheAlternateStack(t *testing.T) {
	cmd := backend(t)
	var log logs
	srv, err := New(AllowRoot(), Cmd(cmd), Port(0), Set("reap-orphans", "true"), Set("handle-signals", "true"),
		OnLog(log.add))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, &log)
	}
	for _, sig := range []syscall.Signal{syscall.SIGCHLD, syscall.SIGINT, syscall.SIGTERM} {
		if handled, onstack := signalFlags(sig); !handled || !onstack {
			t.Errorf("%v: handled %v, SA_ONSTACK %v; Go needs both", sig, handled, onstack)
		}
	}
	if code, _ := get(t, srv.Addr(), "/hello"); code != 200 {
		t.Fatalf("GET /hello: %d", code)
	}
	if err := srv.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v\n%s", err, &log)
	}
	requireNoChildren(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		if handled, onstack := signalFlags(sig); !handled || !onstack {
			t.Errorf("%v after Stop: handled %v, SA_ONSTACK %v; want Go's handler back", sig, handled, onstack)
		}
	}
}

// pidsIn lists the PIDs of the server's workers in state ("" for all).
func pidsIn(t *testing.T, srv *Server, state string) []int {
	t.Helper()
	st, err := srv.Status()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, w := range st.Workers {
		if state == "" || w.State == state {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// eventually polls done until it holds or seconds pass.
func eventually(seconds float64, done func() bool) bool {
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for !done() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func TestReloadAndScale(t *testing.T) {
	cmd := backend(t)
	requireNoChildren(t)
	var log logs
	reloads := make(chan Event, 10)
	srv, err := New(AllowRoot(), Cmd(cmd), Port(0), NMin(2), NMax(4), OnLog(log.add), OnEvent(func(e Event) {
		if e.Type == EventReload {
			reloads <- e
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Reload(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Reload before Start: %v, want ErrState", err)
	}
	if err := srv.Scale(1, 2); !errors.Is(err, ErrState) {
		t.Errorf("Scale before Start: %v, want ErrState", err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v\n%s", err, &log)
	}
	if !eventually(10, func() bool { return len(pidsIn(t, srv, "ready")) == 2 }) {
		t.Fatalf("no two ready workers: %v\n%s", pidsIn(t, srv, ""), &log)
	}
	before := pidsIn(t, srv, "ready")
	if st, _ := srv.Status(); st.Generation != 1 || st.Reload.State != "none" {
		t.Errorf("status before the reload: %s", st.JSON)
	}

	if err := srv.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v\n%s", err, &log)
	}
	st, err := srv.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Generation != 2 || st.Reload.State != "done" || st.Reload.Generation != 2 {
		t.Errorf("status after the reload: %s", st.JSON)
	}
	// Every worker is new, of generation 2; the old ones drain and go.
	fresh := func() bool {
		st, err := srv.Status()
		if err != nil || len(st.Workers) != 2 {
			return false
		}
		for _, w := range st.Workers {
			for _, old := range before {
				if w.PID == old || w.Generation != 2 {
					return false
				}
			}
		}
		return true
	}
	if !eventually(10, fresh) {
		st, _ := srv.Status()
		t.Fatalf("workers after the reload, before %v: %s", before, st.JSON)
	}
	if code, _ := get(t, srv.Addr(), "/hello"); code != 200 {
		t.Errorf("GET /hello after the reload: %d", code)
	}
	select {
	case e := <-reloads:
		if !e.OK || e.Generation != 2 || e.Error != "" {
			t.Errorf("reload event: %s", e.JSON)
		}
	case <-time.After(10 * time.Second):
		t.Error("no reload event")
	}

	if err := srv.Scale(3, 3); err != nil {
		t.Fatalf("Scale(3, 3): %v", err)
	}
	if !eventually(10, func() bool { return len(pidsIn(t, srv, "ready")) == 3 }) {
		t.Errorf("workers after Scale(3, 3): %v", pidsIn(t, srv, ""))
	}
	if st, err := srv.Status(); err != nil || st.Config["n-min"] != float64(3) || st.Config["n-max"] != float64(3) {
		t.Errorf("config after Scale(3, 3): %v %v", st.Config, err)
	}
	err = srv.Scale(3, 2)
	var ve *Error
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &ve) || ve.Message != "n-min 3: must be at most n-max (2)" {
		t.Errorf("Scale(3, 2): %v, want ErrInvalid n-min 3: must be at most n-max (2)", err)
	}
	if st, _ := srv.Status(); st.Config["n-min"] != float64(3) {
		t.Errorf("config after a failed Scale: %v", st.Config)
	}

	if err := srv.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v\n%s", err, &log)
	}
	requireNoChildren(t)
	if err := srv.Reload(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Reload after Stop: %v, want ErrState", err)
	}
	if err := srv.Scale(1, 1); !errors.Is(err, ErrState) {
		t.Errorf("Scale after Stop: %v, want ErrState", err)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if err := srv.Reload(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Reload with an ended context: %v, want context.Canceled", err)
	}
	srv.Close()
	if err := srv.Reload(ctx); !errors.Is(err, ErrState) {
		t.Errorf("Reload after Close: %v, want ErrState", err)
	}
}

// valve cannot cancel a reload: a context that ends first only ends the wait, and Close still
// returns (stopping the server ends the reload).
func TestReloadContextBoundsTheWait(t *testing.T) {
	cmd := backend(t)
	requireNoChildren(t)
	// Workers of the next generation never answer once the file "slow" exists.
	slow := filepath.Join(t.TempDir(), "slow")
	srv, err := New(AllowRoot(), Cmd("if [ -e "+slow+" ]; then exec sleep 30; fi; exec "+cmd), Port(0),
		Set("startup-timeout", "60"), OnLog(func(LogLevel, string) {}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	began := time.Now()
	if err := srv.Reload(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Reload: %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("Reload took %v after its context ended", took)
	}
	if st, err := srv.Status(); err != nil || st.Reload.State != "in_progress" {
		t.Errorf("status while the reload goes on: %v %v", st, err)
	}
	if code, _ := get(t, srv.Addr(), "/hello"); code != 200 {
		t.Errorf("GET /hello during the reload: %d", code)
	}
	closed := make(chan error, 1)
	go func() { closed <- srv.Close() }()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return while a reload went on")
	}
	requireNoChildren(t)
}
