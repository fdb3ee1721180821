package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var (
	keyA = strings.Repeat("A", 43) + "="
	keyB = strings.Repeat("B", 43) + "="
	apiW = api.Workload{Namespace: "ns", Kind: "Deployment", Name: "api"}
	ipA  = netip.MustParseAddr("198.19.0.10")
	ipB  = netip.MustParseAddr("198.19.0.11")
)

func req(pub, routeAs string) api.InterceptRequest {
	return api.InterceptRequest{PublicKey: pub, Namespace: "ns", Service: "api", Workload: apiW, Port: 8080, RouteAs: routeAs, Holder: "holder-" + pub[:1]}
}

func TestInterceptConflicts(t *testing.T) {
	for _, tc := range []struct {
		name          string
		first, second api.InterceptRequest
		wantErr       string // "" = both admitted
	}{
		{"full then full", req(keyA, ""), req(keyB, ""), "intercepted by holder-A (all traffic)"},
		{"full then isolated", req(keyA, ""), req(keyB, "bob"), "intercepted by holder-A (all traffic)"},
		{"isolated then full", req(keyA, "alice"), req(keyB, ""), `isolated, route-as "alice"`},
		{"same value", req(keyA, "alice"), req(keyB, "alice"), `route-as "alice" on service ns/api is taken by holder-A`},
		{"two values", req(keyA, "alice"), req(keyB, "bob"), ""},
		{"same peer re-adds", req(keyA, "alice"), req(keyA, ""), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewIntercepts(0, nil)
			if _, err := tab.Add(tc.first, ipA); err != nil {
				t.Fatal(err)
			}
			_, err := tab.Add(tc.second, ipB)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("second add: %v", err)
			case tc.wantErr != "" && (err == nil || !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("second add: got %v, want ErrConflict containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestInterceptTableAndLease(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(15*time.Second, clk.now)
	v0 := tab.Table("ns", "api").Version
	a, err := tab.Add(req(keyA, "alice"), ipA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tab.Add(req(keyB, "bob"), ipB); err != nil {
		t.Fatal(err)
	}
	got := tab.Table("ns", "api")
	if got.Version <= v0 || len(got.Routes) != 2 {
		t.Fatalf("table: got %+v, want 2 routes, version > %d", got, v0)
	}
	if r, ok := got.ForRouteAs("bob"); !ok || r.Target != "198.19.0.11:8080" {
		t.Fatalf("route for bob: got %+v %v, want target 198.19.0.11:8080", r, ok)
	}
	if _, ok := got.Full(); ok {
		t.Fatal("a full route in an isolated-only table")
	}
	if !tab.TargetAllowed("198.19.0.10:8080") || tab.TargetAllowed("198.19.0.10:22") {
		t.Fatal("TargetAllowed: want only live targets")
	}

	// A renews, B does not: after the TTL only B expires, and the workload
	// is not orphaned (A still holds it).
	clk.add(10 * time.Second)
	if unknown := tab.Renew(keyA, []string{a.ID, "nope"}); len(unknown) != 1 || unknown[0] != "nope" {
		t.Fatalf("renew unknown: got %v, want [nope]", unknown)
	}
	clk.add(6 * time.Second)
	if n := tab.Expire(); n != 1 {
		t.Fatalf("expired: got %d, want 1", n)
	}
	if w := tab.TakeExpired(); len(w) != 0 {
		t.Fatalf("orphans while A holds the workload: got %v", w)
	}
	// B leaves after its lease already ran out: A still holds the workload.
	if removed, remaining := tab.Remove(keyB, "ns", "api"); removed || remaining != 1 {
		t.Fatalf("late leave: got removed=%v remaining=%d, want false, 1", removed, remaining)
	}
	clk.add(10 * time.Second)
	if n := tab.Expire(); n != 1 {
		t.Fatalf("expired: got %d, want 1", n)
	}
	select {
	case <-tab.Kick():
	default:
		t.Fatal("no kick after the last lease expired")
	}
	if w := tab.TakeExpired(); len(w) != 1 || w[0] != apiW {
		t.Fatalf("orphans: got %v, want [%v]", w, apiW)
	}
}

func TestInterceptWaitWakesOnChange(t *testing.T) {
	tab := NewIntercepts(0, nil)
	v := tab.Table("ns", "api").Version
	done := make(chan api.RouteTable)
	go func() { done <- tab.Wait(context.Background(), "ns", "api", v) }()
	if _, err := tab.Add(req(keyA, ""), ipA); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-done:
		if r, ok := got.Full(); !ok || r.Target != "198.19.0.10:8080" {
			t.Fatalf("woken table: got %+v, want the full route", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not wake on Add")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := tab.Wait(ctx, "ns", "api", tab.Table("ns", "api").Version); got.Version != tab.Table("ns", "api").Version {
		t.Fatalf("cancelled wait: got version %d", got.Version)
	}
}

// TestRelayConnect runs the relay on loopback: a sidecar-like client
// CONNECTs to a live target (an echo server standing in for the workstation)
// with the token; a wrong token, an unregistered target and a dead target
// are refused with 401, 403 and 502.
func TestRelayConnect(t *testing.T) {
	echoPort := echoServer(t).Addr().(*net.TCPAddr).Port
	dead := listen(t)
	deadPort := dead.Addr().(*net.TCPAddr).Port
	dead.Close()

	tab := NewIntercepts(0, nil)
	lo := netip.MustParseAddr("127.0.0.1")
	r1 := req(keyA, "")
	r1.Port = echoPort
	if _, err := tab.Add(r1, lo); err != nil {
		t.Fatal(err)
	}
	r2 := req(keyB, "")
	r2.Service, r2.Port = "other", deadPort
	if _, err := tab.Add(r2, lo); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	relay := NewRelay(RelayConfig{Intercepts: tab, Token: "tok", Dial: (&net.Dialer{}).DialContext, DialTimeout: time.Second, Registerer: reg})
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = relay.Run(ctx, ln) }()

	connect := func(target, token string) (net.Conn, *bufio.Reader, int) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", target, target, token)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return c, br, resp.StatusCode
	}
	live := fmt.Sprintf("127.0.0.1:%d", echoPort)
	if _, _, code := connect(live, "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong token: got %d, want 401", code)
	}
	if _, _, code := connect("127.0.0.1:1", "tok"); code != http.StatusForbidden {
		t.Errorf("unregistered target: got %d, want 403", code)
	}
	if _, _, code := connect(fmt.Sprintf("127.0.0.1:%d", deadPort), "tok"); code != http.StatusBadGateway {
		t.Errorf("dead target: got %d, want 502", code)
	}
	c, br, code := connect(live, "tok")
	if code != http.StatusOK {
		t.Fatalf("live target: got %d, want 200", code)
	}
	fmt.Fprint(c, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echo through relay: got %q, %v", line, err)
	}
	for res, want := range map[string]float64{"ok": 1, "denied": 1, "dial_failed": 1} {
		if got := testutil.ToFloat64(relay.conns.WithLabelValues(res)); got != want {
			t.Errorf("relay connections{result=%s}: got %v, want %v", res, got, want)
		}
	}

	// The route poll answers at once for an old version, with the token only.
	hc := &http.Client{Timeout: 5 * time.Second}
	get := func(token string) (*http.Response, api.RouteTable) {
		rq, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/v1/routes?namespace=ns&service=api&after=0", nil)
		rq.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tabl api.RouteTable
		_ = json.NewDecoder(resp.Body).Decode(&tabl)
		return resp, tabl
	}
	if resp, _ := get("nope"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("routes with a wrong token: got %d, want 401", resp.StatusCode)
	}
	if resp, tabl := get("tok"); resp.StatusCode != 200 || len(tabl.Routes) != 1 || tabl.Routes[0].Target != live {
		t.Errorf("routes: got %d %+v, want one route to %s", resp.StatusCode, tabl, live)
	}
}

type fakeRestorer struct {
	mu       sync.Mutex
	patched  []PatchedWorkload
	restored chan api.Workload
}

func (f *fakeRestorer) Patched(context.Context) ([]PatchedWorkload, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]PatchedWorkload(nil), f.patched...), nil
}

func (f *fakeRestorer) Restore(_ context.Context, w api.Workload) error {
	f.mu.Lock()
	for i, p := range f.patched {
		if p.Workload == w {
			f.patched = append(f.patched[:i], f.patched[i+1:]...)
			break
		}
	}
	f.mu.Unlock()
	f.restored <- w
	return nil
}

// TestOrphanRestorer: an expired lease restores its workload at once; a
// patch nobody holds is restored by the sweep after the grace; a held one
// never.
func TestOrphanRestorer(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(time.Second, clk.now)
	held := api.Workload{Namespace: "ns", Kind: "Deployment", Name: "held"}
	stray := api.Workload{Namespace: "ns", Kind: "StatefulSet", Name: "stray"}
	hr := req(keyB, "")
	hr.Service, hr.Workload = "held", held
	if _, err := tab.Add(hr, ipB); err != nil {
		t.Fatal(err)
	}
	fr := &fakeRestorer{restored: make(chan api.Workload, 10), patched: []PatchedWorkload{{Workload: held}, {Workload: stray}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		RunOrphanRestorer(ctx, OrphanConfig{Intercepts: tab, Restorer: fr, Grace: time.Hour, Every: 10 * time.Millisecond, Now: clk.now})
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })

	if _, err := tab.Add(req(keyA, ""), ipA); err != nil {
		t.Fatal(err)
	}
	// Keep "held" alive; let A's lease run out.
	clk.add(2 * time.Second)
	tab.Renew(keyB, []string{interceptID(keyB, "ns", "held")})
	tab.mu.Lock()
	tab.byID[interceptID(keyB, "ns", "held")].Expires = clk.now().Add(time.Hour)
	tab.mu.Unlock()
	tab.Expire()
	if got := waitRestored(t, fr); got != apiW {
		t.Fatalf("restored: got %v, want %v (lease expired)", got, apiW)
	}
	clk.add(2 * time.Hour) // past the grace: the sweep takes the stray patch
	if got := waitRestored(t, fr); got != stray {
		t.Fatalf("restored: got %v, want %v (no live intercept)", got, stray)
	}
}

func waitRestored(t *testing.T, fr *fakeRestorer) api.Workload {
	t.Helper()
	select {
	case w := <-fr.restored:
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("nothing restored")
		return api.Workload{}
	}
}

// echoServer serves on loopback, echoing every connection back, until
// the test ends.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
