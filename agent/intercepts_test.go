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
	"github.com/bridgetun/bridgetun/tunnel"

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

	// A renews, B does not: after the TTL only B's route goes; B's hold
	// (and A's lease) keep the workload patched.
	clk.add(10 * time.Second)
	if unknown := tab.Renew(keyA, []string{a.ID, "nope"}); len(unknown) != 1 || unknown[0] != "nope" {
		t.Fatalf("renew unknown: got %v, want [nope]", unknown)
	}
	clk.add(6 * time.Second)
	if routes, holds := tab.Expire(); routes != 1 || holds != 0 {
		t.Fatalf("expired: got %d routes, %d holds; want 1, 0", routes, holds)
	}
	if got := tab.Table("ns", "api"); len(got.Routes) != 1 || got.Routes[0].ID != a.ID {
		t.Fatalf("table after B's lease ran out: got %+v, want only A's route", got)
	}
	if w := tab.TakeExpired(); len(w) != 0 {
		t.Fatalf("orphans while A holds the workload: got %v", w)
	}
	// B leaves while held: the hold goes, A still holds the workload.
	if removed, remaining := tab.Remove(keyB, "ns", "api"); !removed || remaining != 1 {
		t.Fatalf("leave while held: got removed=%v remaining=%d, want true, 1", removed, remaining)
	}
	if removed, remaining := tab.Remove(keyB, "ns", "api"); removed || remaining != 1 {
		t.Fatalf("second leave: got removed=%v remaining=%d, want false, 1", removed, remaining)
	}
	// A's lease runs out: its route goes, its hold stays for the default
	// grace, and only then is the workload orphaned.
	clk.add(10 * time.Second)
	if routes, _ := tab.Expire(); routes != 1 {
		t.Fatalf("expired routes: got %d, want 1", routes)
	}
	if w := tab.TakeExpired(); len(w) != 0 {
		t.Fatalf("orphans while A's hold lasts: got %v", w)
	}
	clk.add(api.DefaultGrace)
	if _, holds := tab.Expire(); holds != 1 {
		t.Fatalf("expired holds: got %d, want 1", holds)
	}
	select {
	case <-tab.Kick():
	default:
		t.Fatal("no kick after the last hold ended")
	}
	if w := tab.TakeExpired(); len(w) != 1 || w[0] != apiW {
		t.Fatalf("orphans: got %v, want [%v]", w, apiW)
	}
}

// TestInterceptHold: an expired lease drops the route (sidecars pass
// through, the target is refused, a renewal says unknown) but not the hold:
// the workload is orphaned only when the intercept's grace has passed
// since its last renewal. List shows the hold and its end.
func TestInterceptHold(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(15*time.Second, clk.now)
	r := req(keyA, "")
	r.GraceSeconds = 600
	a, err := tab.Add(r, ipA)
	if err != nil {
		t.Fatal(err)
	}
	if a.GraceSeconds != 600 {
		t.Errorf("granted grace: got %ds, want 600", a.GraceSeconds)
	}
	clk.add(5 * time.Second)
	tab.Renew(keyA, []string{a.ID}) // the last renewal: t=1005
	v := tab.Table("ns", "api").Version
	clk.add(16 * time.Second)
	if routes, holds := tab.Expire(); routes != 1 || holds != 0 {
		t.Fatalf("expire: got %d routes, %d holds; want 1, 0", routes, holds)
	}
	if got := tab.Table("ns", "api"); got.Version <= v || len(got.Routes) != 0 {
		t.Fatalf("table after the lease: got %+v, want no routes and a new version", got)
	}
	if tab.TargetAllowed(a.Target) {
		t.Error("TargetAllowed: a held intercept's target is still allowed")
	}
	if tab.Live(apiW) || !tab.Holds(apiW) {
		t.Errorf("Live, Holds: got %v, %v; want false, true", tab.Live(apiW), tab.Holds(apiW))
	}
	if unknown := tab.Renew(keyA, []string{a.ID}); len(unknown) != 1 {
		t.Errorf("renew of a held intercept: got unknown %v, want its id (add it again)", unknown)
	}
	wantUntil := time.Unix(1005, 0).Add(10 * time.Minute)
	if l := tab.List("ns"); len(l) != 1 || !l[0].Held || !l[0].HeldUntil.Equal(wantUntil) {
		t.Fatalf("list: got %+v, want one held until %v", l, wantUntil)
	}
	clk.t = wantUntil.Add(-time.Second)
	if _, holds := tab.Expire(); holds != 0 || len(tab.TakeExpired()) != 0 {
		t.Fatal("the hold ended before its grace")
	}
	clk.t = wantUntil
	if _, holds := tab.Expire(); holds != 1 {
		t.Fatalf("holds ended at the grace: got %d, want 1", holds)
	}
	if w := tab.TakeExpired(); len(w) != 1 || w[0] != apiW {
		t.Fatalf("orphans: got %v, want [%v]", w, apiW)
	}
	if tab.Holds(apiW) || len(tab.List("")) != 0 {
		t.Error("the intercept is still listed after its hold ended")
	}
}

// TestInterceptReAddWithinGrace: adding a held intercept again brings its
// route back and cancels the restore that its hold's end would have
// caused.
func TestInterceptReAddWithinGrace(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(15*time.Second, clk.now)
	r := req(keyA, "")
	r.GraceSeconds = 60
	if _, err := tab.Add(r, ipA); err != nil {
		t.Fatal(err)
	}
	clk.add(20 * time.Second)
	tab.Expire()
	v := tab.Table("ns", "api").Version
	clk.add(30 * time.Second) // asleep, within the grace
	if _, err := tab.Add(r, ipA); err != nil {
		t.Fatal(err)
	}
	got := tab.Table("ns", "api")
	if _, ok := got.Full(); !ok || got.Version <= v {
		t.Fatalf("table after the re-add: got %+v, want the full route back at a new version", got)
	}
	clk.add(40 * time.Second) // past the first hold's end; the lease renewed
	tab.Renew(keyA, []string{interceptID(keyA, "ns", "api")})
	if routes, holds := tab.Expire(); routes != 0 || holds != 0 || len(tab.TakeExpired()) != 0 {
		t.Fatalf("after the re-add: got %d routes, %d holds expired; want none and no orphan", routes, holds)
	}
}

// TestInterceptGraceBounds: 0 is the default, a longer one is capped,
// a negative one refused.
func TestInterceptGraceBounds(t *testing.T) {
	for _, tc := range []struct {
		seconds, want int
		wantErr       string
	}{
		{0, int(api.DefaultGrace / time.Second), ""},
		{30, 30, ""},
		{int(48 * time.Hour / time.Second), int(api.MaxGrace / time.Second), ""},
		{-1, 0, "grace -1s"},
	} {
		r := req(keyA, "")
		r.GraceSeconds = tc.seconds
		it, err := NewIntercepts(0, nil).Add(r, ipA)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("grace %d: got %v, want an error containing %q", tc.seconds, err, tc.wantErr)
			}
		case err != nil || it.GraceSeconds != tc.want:
			t.Errorf("grace %d: got %d, %v; want %d", tc.seconds, it.GraceSeconds, err, tc.want)
		}
	}
}

// TestInterceptRemovePeerKeepsHold: a registration that expires (a sleep
// past the registration TTL) drops the routes but not the holds.
func TestInterceptRemovePeerKeepsHold(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(15*time.Second, clk.now)
	if _, err := tab.Add(req(keyA, ""), ipA); err != nil {
		t.Fatal(err)
	}
	pub, err := tunnel.ParseKey(keyA)
	if err != nil {
		t.Fatal(err)
	}
	clk.add(10 * time.Minute)
	tab.RemovePeer(pub)
	if _, ok := tab.Table("ns", "api").Full(); ok {
		t.Error("the route outlived its peer's registration")
	}
	if !tab.Holds(apiW) || len(tab.TakeExpired()) != 0 {
		t.Error("the hold went with the registration; want it kept for the grace")
	}
	clk.add(api.DefaultGrace)
	tab.Expire()
	if w := tab.TakeExpired(); len(w) != 1 {
		t.Errorf("after the grace: got orphans %v, want [%v]", w, apiW)
	}
}

// TestInterceptConflictWithHeld: a held intercept still excludes others,
// and the refusal says its holder is away and until when.
func TestInterceptConflictWithHeld(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(15*time.Second, clk.now)
	if _, err := tab.Add(req(keyA, ""), ipA); err != nil {
		t.Fatal(err)
	}
	clk.add(20 * time.Second)
	tab.Expire()
	_, err := tab.Add(req(keyB, ""), ipB)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "holder-A (away; held until 00:31:40 UTC") {
		t.Fatalf("got %v, want a conflict naming the away holder and the hold's end", err)
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
	relay := NewRelay(RelayConfig{Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, Dial: (&net.Dialer{}).DialContext, DialTimeout: time.Second, Registerer: reg})
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

// TestOrphanRestorer: a workload is restored at once when its last
// intercept's lease and hold have both run out; a patch the table does not
// hold is restored by the sweep after its recorded grace (or the default
// one) since the later of its patch and the gateway's start; a live one
// never.
func TestOrphanRestorer(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tab := NewIntercepts(time.Second, clk.now)
	held := api.Workload{Namespace: "ns", Kind: "Deployment", Name: "held"}
	stray := api.Workload{Namespace: "ns", Kind: "StatefulSet", Name: "stray"}
	graced := api.Workload{Namespace: "ns", Kind: "Deployment", Name: "graced"}
	hr := req(keyB, "")
	hr.Service, hr.Workload = "held", held
	if _, err := tab.Add(hr, ipB); err != nil {
		t.Fatal(err)
	}
	fr := &fakeRestorer{restored: make(chan api.Workload, 10), patched: []PatchedWorkload{
		{Workload: held}, {Workload: stray}, {Workload: graced, Grace: 3 * time.Hour},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		RunOrphanRestorer(ctx, OrphanConfig{Intercepts: tab, Restorer: fr, Grace: time.Hour, Every: 10 * time.Millisecond, Now: clk.now})
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })

	ar := req(keyA, "")
	ar.GraceSeconds = 60
	if _, err := tab.Add(ar, ipA); err != nil {
		t.Fatal(err)
	}
	// Keep "held" alive; let A's lease run out, then its hold.
	keep := func() {
		tab.mu.Lock()
		tab.byID[interceptID(keyB, "ns", "held")].it.Expires = clk.now().Add(24 * time.Hour)
		tab.mu.Unlock()
	}
	keep()
	clk.add(2 * time.Second)
	if routes, _ := tab.Expire(); routes != 1 || !tab.Holds(apiW) {
		t.Fatal("A's hold went with its lease")
	}
	clk.add(time.Minute)
	tab.Expire()
	if got := waitRestored(t, fr); got != apiW {
		t.Fatalf("restored: got %v, want %v (lease and hold ran out)", got, apiW)
	}
	clk.add(2 * time.Hour) // past the default grace: the sweep takes the stray patch
	if got := waitRestored(t, fr); got != stray {
		t.Fatalf("restored: got %v, want %v (nothing holds it)", got, stray)
	}
	clk.add(time.Hour) // past the recorded 3 h
	if got := waitRestored(t, fr); got != graced {
		t.Fatalf("restored: got %v, want %v (its recorded grace ran out)", got, graced)
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
