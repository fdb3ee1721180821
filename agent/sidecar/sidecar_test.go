package sidecar

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

func TestNoRoutesPassesThrough(t *testing.T) {
	e := newEnv(t, envOptions{rawOriginal: true})
	if got, want := rawExchange(t, e.addr, "hello"), "original\nhello"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonNoRoute)); got != 1 {
		t.Errorf("passthrough{no_route}: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(e.sc.m.connections.WithLabelValues(routeCluster)); got != 1 {
		t.Errorf("connections{cluster}: got %v, want 1", got)
	}
}

func TestFullRouteRelaysRawTCP(t *testing.T) {
	e := newEnv(t, envOptions{rawOriginal: true})
	ws := rawServer(t, "workstation")
	e.setRoutes(t, api.Route{ID: "1", Target: ws, Holder: "alice@laptop"})

	// A megabyte of non-HTTP bytes, echoed after the greeting; the echo only
	// ends because the client's half-close travels through sidecar and gateway.
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	got := rawExchange(t, e.addr, string(payload))
	if want := "workstation\n" + string(payload); got != want {
		t.Fatalf("got %d bytes starting %q, want the greeting and the %d bytes echoed", len(got), got[:min(len(got), 20)], len(payload))
	}
	if got := testutil.ToFloat64(e.sc.m.connections.WithLabelValues(routeLocal)); got != 1 {
		t.Errorf("connections{local}: got %v, want 1", got)
	}
}

func TestFullRouteUnreachableWorkstationPassesThrough(t *testing.T) {
	const dialTimeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		hang bool // the gateway never answers the CONNECT
	}{
		{name: "workstation down (gateway answers 502)"},
		{name: "gateway does not answer", hang: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{rawOriginal: true, dialTimeout: dialTimeout})
			target := deadAddr(t)
			if tc.hang {
				e.gw.hangOn(target)
			}
			e.setRoutes(t, api.Route{ID: "1", Target: target, Holder: "alice@laptop"})
			start := time.Now()
			if got, want := rawExchange(t, e.addr, "hello"), "original\nhello"; got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
			if took, limit := time.Since(start), dialTimeout+time.Second; took > limit {
				t.Errorf("original answered after %v, want within %v", took, limit)
			}
			if got := testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonDialFailed)); got != 1 {
				t.Errorf("passthrough{dial_failed}: got %v, want 1", got)
			}
			if got := testutil.ToFloat64(e.sc.m.relayErrors); got != 1 {
				t.Errorf("relay errors: got %v, want 1", got)
			}
		})
	}
}

func TestProbeListenerAlwaysPassesThrough(t *testing.T) {
	e := newEnv(t, envOptions{rawOriginal: true})
	ws := rawServer(t, "workstation")
	e.setRoutes(t, api.Route{ID: "1", Target: ws, Holder: "alice@laptop"})
	if got, want := rawExchange(t, e.addr, "x"), "workstation\nx"; got != want {
		t.Fatalf("intercepted port: got %q, want %q", got, want)
	}
	if got, want := rawExchange(t, e.probeAddr, "probe"), "original\nprobe"; got != want {
		t.Fatalf("probe port: got %q, want %q", got, want)
	}
}

func TestIsolatedNonHTTPPassesThrough(t *testing.T) {
	for _, tc := range []struct {
		name, send string
	}{
		{name: "TLS client hello", send: "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"},
		{name: "lower-case junk", send: "hello there\r\n"},
		{name: "HTTP/2 over TLS version in an HTTP/1 line", send: "GET / HTTP/2.0\r\n\r\n"},
		{name: "nothing, then half-close", send: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{rawOriginal: true})
			e.setRoutes(t, api.Route{ID: "1", Target: rawServer(t, "alice"), RouteAs: "alice", Holder: "alice"})
			if got, want := rawExchange(t, e.addr, tc.send), "original\n"+tc.send; got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
			if got := testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonNotHTTP)); got != 1 {
				t.Errorf("passthrough{not_http}: got %v, want 1", got)
			}
		})
	}
	t.Run("silent client, server speaks first", func(t *testing.T) {
		e := newEnv(t, envOptions{rawOriginal: true})
		e.setRoutes(t, api.Route{ID: "1", Target: rawServer(t, "alice"), RouteAs: "alice", Holder: "alice"})
		if got, want := readLine(t, e.addr), "original\n"; got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

// isolatedEnv has workstations for route-as alice and bob.
func isolatedEnv(t *testing.T) *env {
	e := newEnv(t, envOptions{})
	e.setRoutes(t,
		api.Route{ID: "a", Target: httpServer(t, "alice"), RouteAs: "alice", Holder: "alice@laptop"},
		api.Route{ID: "b", Target: httpServer(t, "bob"), RouteAs: "bob", Holder: "bob@laptop"},
	)
	return e
}

func TestIsolatedRoutesByHeader(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2c {
			name = "h2c"
		}
		t.Run(name, func(t *testing.T) {
			e := isolatedEnv(t)
			// One connection (MaxConnsPerHost 1) carries every row: the
			// decision is per request.
			client := newClient(t, h2c)
			for _, row := range []struct {
				routeAs, wantWho, wantServedBy string
			}{
				{"alice", "alice", "local"},
				{"bob", "bob", "local"},
				{"", "original", "cluster"},
				{"carol", "original", "cluster"},
				{"alice", "alice", "local"},
			} {
				req, _ := http.NewRequest(http.MethodGet, "http://"+e.addr+"/x", nil)
				if row.routeAs != "" {
					req.Header.Set(api.RouteAsHeader, row.routeAs)
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("route-as %q: %v", row.routeAs, err)
				}
				body, err := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if err != nil {
					t.Fatalf("route-as %q: read body: %v", row.routeAs, err)
				}
				if got, want := string(body), row.wantWho+" GET\n"; got != want {
					t.Errorf("route-as %q: got body %q, want %q", row.routeAs, got, want)
				}
				if got := resp.Header.Get(api.ServedByHeader); got != row.wantServedBy {
					t.Errorf("route-as %q: got %s %q, want %q", row.routeAs, api.ServedByHeader, got, row.wantServedBy)
				}
				if got := resp.Trailer.Get("Who-Trailer"); got != row.wantWho {
					t.Errorf("route-as %q: got trailer Who-Trailer %q, want %q", row.routeAs, got, row.wantWho)
				}
				if got, want := resp.ProtoMajor, map[bool]int{false: 1, true: 2}[h2c]; got != want {
					t.Errorf("route-as %q: got response HTTP/%d, want HTTP/%d", row.routeAs, got, want)
				}
				if got, want := resp.Header.Get("Proto"), map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2c]; got != want {
					t.Errorf("route-as %q: upstream saw %q, want %q", row.routeAs, got, want)
				}
			}
			for _, c := range []struct {
				route, routeAs string
				want           float64
			}{
				{"local", "alice", 2}, {"local", "bob", 1}, {"cluster", "", 1}, {"cluster", "other", 1},
			} {
				if got := testutil.ToFloat64(e.sc.m.requests.WithLabelValues(c.route, c.routeAs)); got != c.want {
					t.Errorf("requests{route=%q,route_as=%q}: got %v, want %v", c.route, c.routeAs, got, c.want)
				}
			}
		})
	}
}

func TestIsolatedPostFallsBackWhenRelayDialFails(t *testing.T) {
	for _, h2c := range []bool{false, true} {
		name := "HTTP/1.1"
		if h2c {
			name = "h2c"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.setRoutes(t, api.Route{ID: "a", Target: deadAddr(t), RouteAs: "alice", Holder: "alice@laptop"})
			// Large enough that the original's echo starts before the upload
			// ends: an HTTP/1 proxy that is not full duplex loses the rest.
			payload := make([]byte, 8<<20)
			_, _ = rand.Read(payload)
			req, _ := http.NewRequest(http.MethodPost, "http://"+e.addr+"/upload", bytes.NewReader(payload))
			req.Header.Set(api.RouteAsHeader, "alice")
			resp, err := newClient(t, h2c).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.Header.Get(api.ServedByHeader); got != "cluster" {
				t.Errorf("got %s %q, want cluster", api.ServedByHeader, got)
			}
			if want := append([]byte("original POST\n"), payload...); !bytes.Equal(body, want) {
				t.Errorf("got %d body bytes starting %q, want the original's echo of all %d bytes", len(body), body[:min(len(body), 20)], len(payload))
			}
			if got := testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonDialFailed)); got != 1 {
				t.Errorf("passthrough{dial_failed}: got %v, want 1", got)
			}
			if got := testutil.ToFloat64(e.sc.m.requests.WithLabelValues(routeCluster, "alice")); got != 1 {
				t.Errorf("requests{cluster,alice}: got %v, want 1", got)
			}
			if got := testutil.ToFloat64(e.sc.m.relayErrors); got < 1 {
				t.Errorf("relay errors: got %v, want at least 1", got)
			}
		})
	}
}

func TestIsolatedUpgrade(t *testing.T) {
	e := isolatedEnv(t)
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"+api.RouteAsHeader+": bob\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %s, want 101 Switching Protocols", resp.Status)
	}
	if got := resp.Header.Get(api.ServedByHeader); got != "local" {
		t.Errorf("got %s %q, want local", api.ServedByHeader, got)
	}
	if got, _ := br.ReadString('\n'); got != "bob\n" {
		t.Fatalf("greeting after the upgrade: got %q, want %q", got, "bob\n")
	}
	_, _ = io.WriteString(c, "ping\n")
	if got, _ := br.ReadString('\n'); got != "ping\n" {
		t.Fatalf("echo after the upgrade: got %q, want %q", got, "ping\n")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want verdict
	}{
		{"", undecided},
		{"G", undecided},
		{"GET", undecided},
		{"GET /index.html HTT", undecided},
		{"GET / HTTP/1.1\r\n", isHTTP},
		{"POST /a?b=c HTTP/1.0\n", isHTTP},
		{"M-SEARCH * HTTP/1.1\r\n", isHTTP},
		{"PRI", undecided},
		{"PRI * HTTP/2.0\r\n", isHTTP},
		{h2Preface, isHTTP},
		{"GET / HTTP/2.0\r\n", notHTTP},
		{"GET /a b HTTP/1.1\r\n", notHTTP},
		{"GET\t/ HTTP/1.1\r\n", notHTTP},
		{" GET / HTTP/1.1\r\n", notHTTP},
		{"\x16\x03\x01", notHTTP},
		{"SSH-2.0-OpenSSH\r\n", notHTTP},
		{"GET /\x00", notHTTP},
		{strings.Repeat("A", maxMethodLen+1), notHTTP},
		{"GET /" + strings.Repeat("a", maxSniffLen), notHTTP},
	} {
		if got := classify([]byte(tc.in)); got != tc.want {
			t.Errorf("classify(%.30q): got %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestRunEndsOpenConnections: Run returns once ctx ends, with a relayed
// raw connection, an HTTP keep-alive connection and an upgraded stream open,
// and their clients see them end.
func TestRunEndsOpenConnections(t *testing.T) {
	e := isolatedEnv(t)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	// Keep-alive: one request answered, connection left open.
	keep, keepR := dial()
	_, _ = io.WriteString(keep, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, err := http.ReadResponse(keepR, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	// Upgraded stream, greeting read, left open.
	up, upR := dial()
	_, _ = io.WriteString(up, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n"+api.RouteAsHeader+": alice\r\n\r\n")
	if resp, err := http.ReadResponse(upR, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: got %v, %v, want 101", resp, err)
	}
	if line, err := upR.ReadString('\n'); err != nil || line != "alice\n" {
		t.Fatalf("upgrade greeting: got %q, %v, want %q", line, err, "alice\n")
	}
	// Undecided bytes: passed through raw to the original after the sniff
	// timeout (it waits for the rest of its request line), left open.
	raw, rawR := dial()
	_, _ = io.WriteString(raw, "GE")
	testkit.WaitFor(t, 5*time.Second, "the raw pass-through", func() bool {
		return testutil.ToFloat64(e.sc.m.passthrough.WithLabelValues(reasonNotHTTP)) == 1
	})

	if err := e.stop(); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*bufio.Reader{"keep-alive": keepR, "upgraded": upR, "raw": rawR} {
		if b, err := io.ReadAll(r); err != nil || len(b) != 0 {
			t.Errorf("%s connection after Run returned: got %q, %v, want a clean end", name, b, err)
		}
	}
	if c, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		_ = c.Close()
		t.Errorf("listener %s still accepts after Run returned", e.addr)
	}
}
