// Package valvetest serves a plumber API with real R workers for the length of a Go test, as
// net/http/httptest serves a handler:
//
//	func TestEcho(t *testing.T) {
//		url := valvetest.Serve(t, "plumber.R", valve.NMin(2))
//		resp, err := http.Get(url + "/echo?msg=hi")
//		...
//	}
package valvetest

import (
	"context"
	"os"
	"testing"
	"time"

	"valve.dev/valve"
)

// ReadyTimeout bounds how long Serve waits for the server to listen and for its n-min workers.
var ReadyTimeout = 60 * time.Second

// Serve serves file on a free port of 127.0.0.1 and returns its base URL, "http://127.0.0.1:PORT",
// once n-min workers are ready; the server stops, ending its workers, when the test ends
// (t.Cleanup). opts are valve's options and override the defaults here: n-max 2, log level warn,
// 5 s for in-flight requests at the end. When the test runs as root (a CI container), so may the
// workers: they run the test's own code. A server that cannot start fails the test.
func Serve(t testing.TB, file string, opts ...valve.Option) string {
	t.Helper()
	defaults := []valve.Option{valve.File(file), valve.Host("127.0.0.1"), valve.Port(0),
		valve.NMax(2), valve.Set("log-level", "warn"), valve.Set("graceful-timeout", "5")}
	if os.Geteuid() == 0 {
		defaults = append(defaults, valve.AllowRoot())
	}
	srv, err := valve.New(append(defaults, opts...)...)
	if err != nil {
		t.Fatalf("valvetest: %v", err)
	}
	started := false
	t.Cleanup(func() {
		// No deadline: in-flight requests get the graceful-timeout.
		if err := srv.Stop(context.Background()); err != nil && started {
			t.Errorf("valvetest: stopping the server: %v", err)
		}
		srv.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("valvetest: %v", err)
	}
	started = true
	for {
		st, err := srv.Status()
		if err != nil {
			t.Fatalf("valvetest: %v", err)
		}
		ready := 0
		for _, w := range st.Workers {
			if w.State == "ready" {
				ready++
			}
		}
		nMin, _ := st.Config["n-min"].(float64)
		if float64(ready) >= nMin {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("valvetest: %d of n-min %v workers ready after %v", ready, nMin, ReadyTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "http://" + srv.Addr()
}
