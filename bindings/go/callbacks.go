package valve

/*
#include <stdint.h>
*/
import "C"

import (
	"encoding/json"
	"runtime/cgo"
	"sync"
	"sync/atomic"
)

// The kinds of Event valve reports.
const (
	EventWorkerLaunched   = "worker_launched"
	EventWorkerReady      = "worker_ready"
	EventWorkerExited     = "worker_exited"
	EventRequestCompleted = "request_completed"
	EventReload           = "reload"
)

// Event is one of valve's pool events, decoded from the JSON object valve sends. Fields that the
// kind of event does not carry are zero.
type Event struct {
	Type       string  // "worker_launched", "worker_ready", "worker_exited", "request_completed", "reload"
	Worker     int     // the worker's id (the worker that served, for request_completed)
	PID        int     // the worker's process id
	StartupMS  float64 // worker_ready: how long the worker took to answer
	ExitStatus string  // worker_exited: "exited with status 0", "killed by signal 9", ...
	Expected   bool    // worker_exited: whether valve had asked it to stop
	RequestID  string  // request_completed
	Method     string  // request_completed
	Target     string  // request_completed: the request target, "/echo?msg=hi"
	StatusCode int     // request_completed: the HTTP status sent to the client
	DurationMS float64 // request_completed
	OK         bool    // reload: whether the new generation serves
	Generation int     // reload: the generation the reload started
	Error      string  // reload: why it failed
	JSON       string  // the event exactly as valve sent it
}

func decodeEvent(text string) Event {
	var raw struct {
		Event      string          `json:"event"`
		Worker     int             `json:"worker"`
		PID        int             `json:"pid"`
		StartupMS  float64         `json:"startup_ms"`
		Status     json.RawMessage `json:"status"` // a string for worker_exited, a number otherwise
		Expected   bool            `json:"expected"`
		RequestID  string          `json:"request_id"`
		Method     string          `json:"method"`
		Target     string          `json:"target"`
		DurationMS float64         `json:"duration_ms"`
		OK         bool            `json:"ok"`
		Generation int             `json:"generation"`
		Error      string          `json:"error"`
	}
	_ = json.Unmarshal([]byte(text), &raw) // a field that does not decode stays zero; JSON keeps all
	e := Event{Type: raw.Event, Worker: raw.Worker, PID: raw.PID, StartupMS: raw.StartupMS,
		Expected: raw.Expected, RequestID: raw.RequestID, Method: raw.Method, Target: raw.Target,
		DurationMS: raw.DurationMS, OK: raw.OK, Generation: raw.Generation, Error: raw.Error,
		JSON: text}
	if len(raw.Status) > 0 && raw.Status[0] == '"' {
		_ = json.Unmarshal(raw.Status, &e.ExitStatus)
	} else if len(raw.Status) > 0 {
		_ = json.Unmarshal(raw.Status, &e.StatusCode)
	}
	return e
}

// LogLevel is the level of one of valve's log lines.
type LogLevel int

const (
	LogDebug LogLevel = 0
	LogInfo  LogLevel = 1
	LogWarn  LogLevel = 2
	LogError LogLevel = 3
)

func (l LogLevel) String() string {
	switch l {
	case LogDebug:
		return "debug"
	case LogInfo:
		return "info"
	case LogWarn:
		return "warn"
	case LogError:
		return "error"
	}
	return "unknown"
}

// dispatcher hands events and log lines from valve's loop thread to a goroutine of its own, so a
// slow handler never holds up the loop. The queue is unbounded: nothing is dropped, order is kept.
type dispatcher struct {
	onEvent func(Event)
	onLog   func(LogLevel, string)
	refs    int32 // callbacks registered with valve; the last destroy closes the queue

	mu     sync.Mutex
	cond   sync.Cond
	queue  []item
	closed bool
	done   chan struct{} // closed once every queued item has been handled
}

type item struct {
	event bool
	level LogLevel
	text  string
}

func newDispatcher(onEvent func(Event), onLog func(LogLevel, string)) *dispatcher {
	d := &dispatcher{onEvent: onEvent, onLog: onLog, done: make(chan struct{})}
	d.cond.L = &d.mu
	go d.loop()
	return d
}

func (d *dispatcher) push(it item) {
	d.mu.Lock()
	d.queue = append(d.queue, it)
	d.mu.Unlock()
	d.cond.Signal()
}

func (d *dispatcher) close() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.cond.Signal()
}

func (d *dispatcher) loop() {
	defer close(d.done)
	for {
		d.mu.Lock()
		for len(d.queue) == 0 && !d.closed {
			d.cond.Wait()
		}
		batch := d.queue
		d.queue = nil
		d.mu.Unlock()
		if len(batch) == 0 {
			return // closed and drained
		}
		for _, it := range batch {
			if it.event {
				d.onEvent(decodeEvent(it.text))
			} else {
				d.onLog(it.level, it.text)
			}
		}
	}
}

// The exported functions below run on valve's loop thread (see shim.c): copy, queue, return.

//export valveGoEvent
func valveGoEvent(h C.uintptr_t, text *C.char) {
	cgo.Handle(h).Value().(*dispatcher).push(item{event: true, text: C.GoString(text)})
}

//export valveGoLog
func valveGoLog(h C.uintptr_t, level C.int, line *C.char) {
	cgo.Handle(h).Value().(*dispatcher).push(item{level: LogLevel(level), text: C.GoString(line)})
}

//export valveGoRelease
func valveGoRelease(h C.uintptr_t) {
	d := cgo.Handle(h).Value().(*dispatcher)
	if atomic.AddInt32(&d.refs, -1) == 0 {
		cgo.Handle(h).Delete()
		d.close()
	}
}
