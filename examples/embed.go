//go:build ignore

// Embedding valve in a Go program: start a pool on examples/hello/plumber.R, send one request
// through it, print the answer, stop.
//
//	cd examples && go run embed.go [path/to/plumber.R]
//
// It is a program on its own, as embed.c is beside it (hence "ignore": the directory holds no Go
// package, and embed.c would not belong in one). The binding links libvalve; once that is
// installed, CGO_CFLAGS=$(pkg-config --cflags valve) CGO_LDFLAGS=$(pkg-config --libs valve).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"valve.dev/valve"
)

func main() {
	file := "hello/plumber.R"
	if len(os.Args) > 1 {
		file = os.Args[1]
	}
	if err := run(file); err != nil {
		fmt.Fprintln(os.Stderr, "embed:", err)
		os.Exit(1)
	}
}

func run(file string) error {
	opts := []valve.Option{valve.File(file), valve.Port(0), valve.NMax(2)}
	if os.Geteuid() == 0 {
		// valve will not start workers as root unless told to (or given a User to run them as).
		opts = append(opts, valve.AllowRoot())
	}
	srv, err := valve.New(opts...)
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("valve %s serving %s on http://%s\n", valve.Version(), file, srv.Addr())

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + srv.Addr() + "/echo?msg=hello%20from%20Go")
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s\n", resp.Status, body)

	if err := srv.Stop(ctx); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /echo: %s", resp.Status)
	}
	return nil
}
