package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/devflow"
	"github.com/bridgetun/bridgetun/session"
)

// TestTraceCommand: against a session on the socket (TUN mode, so the
// request goes straight to a loopback "frontend"), trace prints the chain
// and exits 0 when the value got through, 1 when a Service was called
// without it; --json prints the one result object; with nothing up it
// fails with the session's reason and prints nothing.
func TestTraceCommand(t *testing.T) {
	if _, err := execRoot(t, t.TempDir(), "trace", "http://frontend/", "--json"); !errors.Is(err, session.ErrNotRunning) {
		t.Fatalf("trace with nothing up: got %v, want %v", err, session.ErrNotRunning)
	}
	var (
		mu    sync.Mutex
		drop  bool
		hops  []api.TraceHop
		trace = api.TracePrefix + "feedfacefeedface"
	)
	frontend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get(api.RouteAsHeader) != trace || r.Header.Get("X-Tenant") != "blue" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		now := time.Now()
		hops = []api.TraceHop{{Namespace: "shop", Service: "frontend", Seen: 1, FirstSeen: now}}
		second := api.TraceHop{Namespace: "shop", Service: "api", Seen: 1, FirstSeen: now.Add(time.Millisecond)}
		if drop {
			second = calledWithout(second)
		}
		hops = append(hops, second)
	}))
	defer frontend.Close()

	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "bridgetun.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(session.Status{State: "connected", Mode: "tun", Namespace: "shop"})
	})
	mux.HandleFunc("POST /trace", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(api.Trace{ID: trace})
	})
	mux.HandleFunc("GET /trace/{id}", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_ = json.NewEncoder(w).Encode(api.Trace{ID: r.PathValue("id"), Hops: hops})
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	out, err := execRoot(t, dir, "trace", frontend.URL+"/", "--header", "X-Tenant=blue")
	if err != nil {
		t.Fatalf("trace: %v\n%s", err, out)
	}
	if !strings.Contains(out, "frontend ✓ → api ✓\n") || !strings.Contains(out, "propagated: ") {
		t.Errorf("trace output:\n%s\nwant the chain frontend ✓ → api ✓ and the verdict", out)
	}
	mu.Lock()
	drop = true
	mu.Unlock()
	out, err = execRoot(t, dir, "trace", frontend.URL+"/", "--header", "X-Tenant=blue", "--json")
	var exit *devflow.ExitError
	if !errors.As(err, &exit) || exit.Code != 1 {
		t.Fatalf("trace with a drop: got %v, want exit code 1", err)
	}
	m := decodeJSON(t, out)
	if m["verdict"] != devflow.TraceDropped || m["id"] != trace || m["status"] != float64(200) {
		t.Errorf("--json: got %v", m)
	}
	chain, _ := m["chain"].([]any)
	if len(chain) != 2 || chain[1].(map[string]any)["propagated"] != false || !strings.Contains(chain[1].(map[string]any)["reason"].(string), "frontend dropped it on its call to api") {
		t.Errorf("--json chain: got %v", chain)
	}
	if _, err := execRoot(t, dir, "trace", frontend.URL, "--header", "novalue"); err == nil || !strings.Contains(err.Error(), "NAME=VALUE") {
		t.Errorf("--header without =: got %v", err)
	}
}

// calledWithout is hop h called only without the header.
func calledWithout(h api.TraceHop) api.TraceHop {
	h.Without, h.FirstWithout, h.Seen, h.FirstSeen = 1, h.FirstSeen, 0, time.Time{}
	return h
}
