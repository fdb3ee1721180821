package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/session"
)

// TestStatusHidesProxyCredentials: the socket API's status carries the
// proxies' credentials (for run), but status never prints them: not as
// text, not with --diagnostics (its run environment), not as --json.
func TestStatusHidesProxyCredentials(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "bridgetun.sock"))
	if err != nil {
		t.Fatal(err)
	}
	st := session.Status{State: "connected", Mode: "netstack", SOCKSProxy: "127.0.0.1:1080", HTTPProxy: "127.0.0.1:3128",
		ProxyAuth: &session.ProxyAuth{SOCKS: session.ProxyCredentials{User: "me", Password: "sekr1t-socks"}, HTTP: session.ProxyCredentials{User: "web", Password: "sekr1t-http"}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(st) })
	srv := &http.Server{Handler: mux}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	for _, args := range [][]string{{"status"}, {"status", "--diagnostics"}, {"status", "--json"}} {
		out, err := execRoot(t, dir, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out, "127.0.0.1:1080") {
			t.Errorf("%v: the SOCKS proxy is not shown:\n%s", args, out)
		}
		if strings.Contains(out, "sekr1t") || strings.Contains(out, "proxy_auth") {
			t.Errorf("%v: prints the proxy credentials:\n%s", args, out)
		}
	}
}
