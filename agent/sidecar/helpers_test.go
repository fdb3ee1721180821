package sidecar

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// Test topology (all loopback):
//
//	client ──► sidecar Listener ──► original (127.0.0.1:port)
//	                 │
//	                 └── CONNECT ──► fake gateway ──► workstation servers
//
// The fake gateway serves /v1/routes (long poll) and the CONNECT relay the
// way agent/routes.go describes; the "workstations" are ordinary servers it dials.

const testToken = "s3cret"

// staticToken is a GatewayClientConfig.Token that always answers tok.
func staticToken(tok string) func() (string, error) {
	return func() (string, error) { return tok, nil }
}

// fakeGateway implements the gateway's side of the sidecar protocol.
type fakeGateway struct {
	srv    *httptest.Server
	closed chan struct{}

	mu      sync.Mutex
	token   string // the bearer token accepted; "" = testToken
	table   api.RouteTable
	changed chan struct{}     // closed and replaced on every change
	hang    map[string]bool   // CONNECT targets that are never answered
	conns   map[net.Conn]bool // hijacked relay connections
	dials   int               // CONNECT requests received
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	g := &fakeGateway{closed: make(chan struct{}), changed: make(chan struct{}), hang: map[string]bool{}, conns: map[net.Conn]bool{}}
	g.srv = httptest.NewServer(g)
	t.Cleanup(g.close)
	return g
}

func (g *fakeGateway) addr() string { return g.srv.Listener.Addr().String() }

// connects returns how many CONNECT requests the gateway has received.
func (g *fakeGateway) connects() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dials
}

// close stops the gateway: blocked handlers return, relays are cut.
func (g *fakeGateway) close() {
	g.mu.Lock()
	select {
	case <-g.closed:
	default:
		close(g.closed)
	}
	for c := range g.conns {
		_ = c.Close()
	}
	g.mu.Unlock()
	g.srv.Close()
}

// set publishes a new route table and returns its version.
func (g *fakeGateway) set(routes ...api.Route) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.table = api.RouteTable{Version: g.table.Version + 1, Routes: routes}
	close(g.changed)
	g.changed = make(chan struct{})
	return g.table.Version
}

func (g *fakeGateway) hangOn(target string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hang[target] = true
}

// rotate makes the gateway accept only tok from now on, as when the
// kubelet has replaced the pod's projected token (and the old one expired).
func (g *fakeGateway) rotate(tok string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.token = tok
}

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	want := cmp.Or(g.token, testToken)
	g.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+want {
		http.Error(w, "unknown sidecar token", http.StatusUnauthorized)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		g.connect(w, r)
	case r.URL.Path == "/v1/routes":
		g.routes(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (g *fakeGateway) routes(w http.ResponseWriter, r *http.Request) {
	after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if err != nil {
		http.Error(w, "bad after", http.StatusBadRequest)
		return
	}
	timeout := time.NewTimer(25 * time.Second)
	defer timeout.Stop()
	for {
		g.mu.Lock()
		t, changed := g.table, g.changed
		g.mu.Unlock()
		if t.Version > after {
			_ = json.NewEncoder(w).Encode(t)
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			_ = json.NewEncoder(w).Encode(t)
			return
		case <-r.Context().Done():
			return
		case <-g.closed:
			return
		}
	}
}

func (g *fakeGateway) connect(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	g.mu.Lock()
	live := false
	for _, rt := range g.table.Routes {
		live = live || rt.Target == target
	}
	hang := g.hang[target]
	g.dials++
	g.mu.Unlock()
	if !live {
		http.Error(w, "not a live route's target", http.StatusForbidden)
		return
	}
	if hang {
		select {
		case <-r.Context().Done():
		case <-g.closed:
		}
		return
	}
	up, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	g.mu.Lock()
	select {
	case <-g.closed:
		g.mu.Unlock()
		_ = c.Close()
		_ = up.Close()
		return
	default:
	}
	g.conns[c] = true
	g.conns[up] = true
	g.mu.Unlock()
	_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
	go relayCopy(up, io.MultiReader(brw.Reader, c))
	go relayCopy(c, up)
}

// relayCopy copies and passes the end on as a half-close.
func relayCopy(dst net.Conn, src io.Reader) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	_ = dst.Close()
}

// rawServer is a TCP server that greets with "name\n" at once, then echoes
// until the client half-closes, then closes.
func rawServer(t *testing.T, name string) string {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// httpServer is an HTTP/1.1 + h2c server. It answers "NAME METHOD\n" and
// then echoes the request body; headers Who and Proto (what it saw), a
// trailer Who-Trailer; "Upgrade: echo" switches to a greeting and echo.
func httpServer(t *testing.T, name string) string {
	t.Helper()
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "echo" {
			c, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"+name+"\n")
			_, _ = io.Copy(c, brw.Reader)
			return
		}
		_ = http.NewResponseController(w).EnableFullDuplex() // echo while reading
		w.Header().Set("Trailer", "Who-Trailer")
		w.Header().Set("Who", name)
		w.Header().Set("Proto", r.Proto)
		_, _ = fmt.Fprintf(w, "%s %s\n", name, r.Method)
		_, _ = io.Copy(w, r.Body)
		w.Header().Set("Who-Trailer", name)
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return ln
}

func testLogger(t *testing.T) *slog.Logger {
	return testkit.Logger(t)
}

// env is a running sidecar with its gateway and original container.
type env struct {
	gw        *fakeGateway
	sc        *Sidecar
	state     *RouteState
	addr      string // the sidecar's Listener
	probeAddr string // its ProbeListener
	// stop cancels Run and WatchRoutes and waits for them (at most 10 s each).
	stop func() error
}

type envOptions struct {
	rawOriginal bool          // a rawServer instead of an httpServer
	dialTimeout time.Duration // 0 = Config's default
	coolOff     time.Duration // 0 = Config's default
}

func newEnv(t *testing.T, opt envOptions) *env {
	t.Helper()
	original := httpServer(t, "original")
	if opt.rawOriginal {
		original = rawServer(t, "original")
	}
	gw := newFakeGateway(t)
	log := testLogger(t)
	gc := NewGatewayClient(GatewayClientConfig{Addr: gw.addr(), Token: staticToken(testToken), Log: log})
	state := &RouteState{}
	ln, probe := listen(t), listen(t)
	sc, err := New(Config{
		Listener: ln, ProbeListener: probe, Original: original,
		Routes: state, Dial: gc.Dial,
		DialTimeout: opt.dialTimeout, SniffTimeout: 300 * time.Millisecond, RelayCoolOff: opt.coolOff,
		Log: log, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone, watchDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- sc.Run(ctx) }()
	go func() { watchDone <- gc.WatchRoutes(ctx, "shop", "web", state.Set) }()
	stop := sync.OnceValue(func() error {
		cancel()
		var errs []error
		for name, ch := range map[string]chan error{"Run": runDone, "WatchRoutes": watchDone} {
			select {
			case err := <-ch:
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: got %w, want nil after cancel", name, err))
				}
			case <-time.After(10 * time.Second):
				errs = append(errs, fmt.Errorf("%s did not return within 10s of cancel", name))
			}
		}
		return errors.Join(errs...)
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return &env{gw: gw, sc: sc, state: state, addr: ln.Addr().String(), probeAddr: probe.Addr().String(), stop: stop}
}

// setRoutes publishes routes at the gateway and waits until the sidecar follows them.
func (e *env) setRoutes(t *testing.T, routes ...api.Route) {
	t.Helper()
	v := e.gw.set(routes...)
	testkit.WaitFor(t, 5*time.Second, fmt.Sprintf("route table version %d", v), func() bool { return e.state.Current().Version == v })
}

// rawExchange sends payload, half-closes and returns all that comes back.
func rawExchange(t *testing.T, addr, payload string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v (got %q so far)", addr, err, b)
	}
	return string(b)
}

// readLine reads one line from a fresh connection that sends nothing.
func readLine(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return line
}

// newClient returns an HTTP client speaking HTTP/1.1 or h2c prior knowledge.
func newClient(t *testing.T, h2c bool) *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols), MaxConnsPerHost: 1}
	if h2c {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
