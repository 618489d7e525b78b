package valvetest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"valve.dev/valve"
)

func helloFile(t *testing.T) string {
	t.Helper()
	src := os.Getenv("VALVE_SRC")
	if src == "" {
		src = filepath.Join("..", "..", "..")
	}
	path, err := filepath.Abs(filepath.Join(src, "examples", "hello", "plumber.R"))
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	client := http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

func TestServeAnswersWithRealWorkersAndStopsAtTheEnd(t *testing.T) {
	var url string
	t.Run("serving", func(t *testing.T) {
		url = Serve(t, helloFile(t), valve.NMin(2))
		if !strings.HasPrefix(url, "http://127.0.0.1:") || strings.HasSuffix(url, ":0") {
			t.Fatalf("url %q", url)
		}
		code, body := getJSON(t, url+"/echo?msg=hi")
		if code != 200 || body["msg"] != "hi" {
			t.Fatalf("GET /echo: %d %v", code, body)
		}
		if code, _ := getJSON(t, url+"/no-such-route"); code != 404 {
			t.Fatalf("GET /no-such-route: %d", code)
		}
	})
	// The subtest ended: its cleanup stopped the server.
	client := http.Client{Timeout: 5 * time.Second}
	if resp, err := client.Get(url + "/echo"); err == nil {
		resp.Body.Close()
		t.Fatalf("the server still answers after its test ended: %d", resp.StatusCode)
	}
}

func TestServeFailsTheTestWhenTheAPICannotLoad(t *testing.T) {
	api := filepath.Join(t.TempDir(), "plumber.R")
	if err := os.WriteFile(api, []byte("#* @get /x\nfunction() 1\nstop('broken on purpose')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Serve(rec, api)
	}()
	<-done
	rec.cleanup()
	if !strings.Contains(rec.fatal, "broken on purpose") {
		t.Fatalf("Serve's failure %q does not quote R's error", rec.fatal)
	}
}

// recorder keeps what Serve reports instead of failing the real test.
type recorder struct {
	testing.TB
	fatal    string
	cleanups []func()
}

func (r *recorder) Helper()          {}
func (r *recorder) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(format string, args ...any) {
	r.fatal += "error: " + fmt.Sprintf(format, args...)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal += fmt.Sprintf(format, args...)
	runtime.Goexit() // as testing.T's Fatalf ends the test's goroutine
}
func (r *recorder) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}
