package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// traceClock is a settable clock for the trace store.
type traceClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *traceClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *traceClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTraceStore() (*Traces, *traceClock) {
	clk := &traceClock{now: time.Unix(1_800_000_000, 0)}
	return newTraces(clk.Now, nil), clk
}

var alice, bob = Identity{User: "alice"}, Identity{User: "bob"}

// TestTraceSightings: a trace counts the requests that carried its value
// per Service and the requests without the header while it is open; a
// value of another trace, or any sighting after it closed, changes
// nothing; only its owner reads it, and its record goes after
// api.TraceRetention.
func TestTraceSightings(t *testing.T) {
	s, clk := newTraceStore()
	if e := s.Epoch(); e != 0 {
		t.Errorf("epoch with no trace: got %d, want 0", e)
	}
	tr, err := s.Start(t.Context(), alice, api.TraceStartRequest{WindowSeconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tr.ID, api.TracePrefix) || len(tr.ID) != len(api.TracePrefix)+16 || tr.Owner != "alice" || tr.Closes.Sub(tr.Started) != 10*time.Second {
		t.Errorf("started trace: got %+v", tr)
	}
	other, err := s.Start(t.Context(), bob, api.TraceStartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if other.ID == tr.ID || other.Closes.Sub(other.Started) != api.DefaultTraceWindow {
		t.Errorf("second trace: got %+v, want another id and the default window", other)
	}
	if e := s.Epoch(); e != 2 {
		t.Errorf("epoch with two open traces: got %d, want 2 (the latest start's)", e)
	}
	s.Record("shop", "frontend", tr.ID)
	clk.Add(time.Millisecond)
	s.Record("shop", "api", tr.ID)
	s.Record("shop", "api", tr.ID)
	clk.Add(time.Millisecond)
	s.Record("shop", "stats", "")                               // without the header: counts for both open traces
	s.Record("shop", "billing", other.ID)                       // bob's trace only
	s.Record("shop", "api", api.TracePrefix+"0000000000000000") // no such trace
	clk.Add(10 * time.Second)                                   // alice's trace closes
	s.Record("shop", "late", tr.ID)
	s.Record("shop", "stats", "")

	got, err := s.Get(alice, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	t0 := tr.Started
	want := []api.TraceHop{
		{Namespace: "shop", Service: "api", Seen: 2, FirstSeen: t0.Add(time.Millisecond)},
		{Namespace: "shop", Service: "frontend", Seen: 1, FirstSeen: t0},
		{Namespace: "shop", Service: "stats", Without: 1, FirstWithout: t0.Add(2 * time.Millisecond)},
	}
	if fmt.Sprint(got.Hops) != fmt.Sprint(want) {
		t.Errorf("alice's hops:\n got %+v\nwant %+v", got.Hops, want)
	}
	gotB, err := s.Get(bob, other.ID)
	if err != nil {
		t.Fatal(err)
	}
	// bob's trace is still open: the late header-less stats request counts.
	if len(gotB.Hops) != 2 || gotB.Hops[0].Service != "billing" || gotB.Hops[0].Seen != 1 || gotB.Hops[1].Service != "stats" || gotB.Hops[1].Without != 2 {
		t.Errorf("bob's hops: got %+v, want billing seen once, stats without the header twice", gotB.Hops)
	}
	if _, err := s.Get(bob, tr.ID); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "alice") {
		t.Errorf("bob reads alice's trace: got %v, want forbidden naming alice", err)
	}
	if _, err := s.Get(alice, "bt-trace-nope"); !errors.Is(err, ErrNoTrace) {
		t.Errorf("unknown trace: got %v, want ErrNoTrace", err)
	}
	clk.Add(api.DefaultTraceWindow)
	if e := s.Epoch(); e != 0 {
		t.Errorf("epoch once every trace closed: got %d, want 0", e)
	}
	clk.Add(api.TraceRetention)
	if _, err := s.Get(alice, tr.ID); !errors.Is(err, ErrNoTrace) {
		t.Errorf("after the retention: got %v, want ErrNoTrace", err)
	}
	if _, err := s.Start(t.Context(), alice, api.TraceStartRequest{WindowSeconds: -1}); err == nil {
		t.Error("negative window accepted")
	}
	long, _ := s.Start(t.Context(), alice, api.TraceStartRequest{WindowSeconds: 3600})
	if d := long.Closes.Sub(long.Started); d != api.MaxTraceWindow {
		t.Errorf("an hour's window: got %s, want the cap %s", d, api.MaxTraceWindow)
	}
}

// TestTraceCaps: an identity has at most maxTracesPerOwner traces (its
// oldest closed one makes room; open ones do not), the store at most
// maxTraces, a trace at most maxTraceHops Services (then Truncated).
func TestTraceCaps(t *testing.T) {
	defer func(o, p, h int) { maxTraces, maxTracesPerOwner, maxTraceHops = o, p, h }(maxTraces, maxTracesPerOwner, maxTraceHops)
	maxTraces, maxTracesPerOwner, maxTraceHops = 3, 2, 2
	s, clk := newTraceStore()
	start := func(who Identity) (api.Trace, error) {
		return s.Start(t.Context(), who, api.TraceStartRequest{WindowSeconds: 10})
	}
	a1, _ := start(alice)
	clk.Add(time.Second)
	if _, err := start(alice); err != nil {
		t.Fatal(err)
	}
	if _, err := start(alice); !errors.Is(err, ErrLimit) {
		t.Fatalf("alice's third open trace: got %v, want ErrLimit", err)
	}
	if _, err := start(bob); err != nil {
		t.Fatalf("bob's first trace beside alice's two: %v", err)
	}
	if _, err := start(Identity{User: "carol"}); !errors.Is(err, ErrLimit) {
		t.Fatalf("a fourth open trace in a store of 3: got %v, want ErrLimit", err)
	}
	clk.Add(10 * time.Second) // all closed
	if _, err := start(alice); err != nil {
		t.Fatalf("alice after her traces closed: %v", err)
	}
	if _, err := s.Get(alice, a1.ID); !errors.Is(err, ErrNoTrace) {
		t.Errorf("alice's oldest closed trace: got %v, want it dropped for the new one", err)
	}
	c1, err := start(Identity{User: "carol"})
	if err != nil {
		t.Fatalf("carol once closed traces can make room: %v", err)
	}
	for _, svc := range []string{"a", "b", "c"} {
		s.Record("ns", svc, c1.ID)
	}
	got, _ := s.Get(Identity{User: "carol"}, c1.ID)
	if len(got.Hops) != 2 || !got.Truncated {
		t.Errorf("three Services in a trace of two hops: got %d hops, truncated %v", len(got.Hops), got.Truncated)
	}
}

// TestTraceStartArmsSidecars: a trace's start returns only after the
// sidecars polling the relay have fetched a route table that names its
// epoch, so none misses the trace's first request; a poll that never
// comes back (a dead sidecar) holds it at most traceArmTimeout.
func TestTraceStartArmsSidecars(t *testing.T) {
	tab := NewIntercepts(0, nil)
	relay := NewRelay(RelayConfig{Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, Log: testkit.Logger(t)})
	ln := listen(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()
	// A sidecar: long polls as WatchRoutes does, keeping the last table.
	var (
		mu   sync.Mutex
		last api.RouteTable
	)
	pctx, pcancel := context.WithCancel(ctx)
	polled := make(chan struct{})
	var pollerDone sync.WaitGroup
	pollerDone.Go(func() {
		var after uint64
		for pctx.Err() == nil {
			rq, _ := http.NewRequestWithContext(pctx, http.MethodGet, fmt.Sprintf("http://%s/v1/routes?namespace=ns&service=api&after=%d", ln.Addr(), after), nil)
			rq.Header.Set("Authorization", "Bearer tok")
			resp, err := http.DefaultClient.Do(rq)
			if err != nil {
				return
			}
			var tb api.RouteTable
			err = json.NewDecoder(resp.Body).Decode(&tb)
			resp.Body.Close()
			if err != nil {
				return
			}
			mu.Lock()
			last = tb
			mu.Unlock()
			if after == 0 {
				close(polled)
			}
			after = tb.Version
		}
	})
	defer func() { pcancel(); pollerDone.Wait() }()
	<-polled
	testkit.WaitFor(t, 5*time.Second, "the sidecar's second poll", func() bool {
		tab.traces.mu.Lock()
		defer tab.traces.mu.Unlock()
		return len(tab.traces.pollers) == 1
	})
	for i := range 3 {
		tr, err := tab.Traces().Start(t.Context(), alice, api.TraceStartRequest{})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		got := last.TraceEpoch
		mu.Unlock()
		if want := uint64(i + 1); got != want {
			t.Errorf("trace %s: when Start returned the sidecar's table had epoch %d, want %d", tr.ID, got, want)
		}
	}
	// A poller that never polls again (its pod died with the poll open).
	defer func(d time.Duration) { traceArmTimeout = d }(traceArmTimeout)
	traceArmTimeout = 200 * time.Millisecond
	doneDead := tab.Traces().Polling("dead-uid/api", 0)
	defer doneDead()
	pcancel()
	pollerDone.Wait()
	t0 := time.Now()
	if _, err := tab.Traces().Start(t.Context(), bob, api.TraceStartRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("start with a dead poller took %s, want about traceArmTimeout", d)
	}
}

// TestRelaySightings: a sidecar's report is recorded for the Service its
// pod backs; for another Service it is refused (403) and not recorded, a
// value that is no trace's is a bad request, no token is 401.
func TestRelaySightings(t *testing.T) {
	tab := NewIntercepts(0, nil)
	relay := NewRelay(RelayConfig{Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, Log: testkit.Logger(t)})
	srv := httptest.NewServer(relay)
	defer srv.Close()
	tr, err := tab.Traces().Start(t.Context(), alice, api.TraceStartRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token string
		s     api.TraceSighting
		want  int
	}{
		{"tok", api.TraceSighting{Namespace: "ns", Service: "api", RouteAs: tr.ID}, http.StatusNoContent},
		{"tok", api.TraceSighting{Namespace: "ns", Service: "api"}, http.StatusNoContent},
		{"tok", api.TraceSighting{Namespace: "ns", Service: "billing", RouteAs: tr.ID}, http.StatusForbidden},
		{"tok", api.TraceSighting{Namespace: "other", Service: "api", RouteAs: tr.ID}, http.StatusForbidden},
		{"tok", api.TraceSighting{Namespace: "ns", Service: "api", RouteAs: "dev-alice"}, http.StatusBadRequest},
		{"", api.TraceSighting{Namespace: "ns", Service: "api", RouteAs: tr.ID}, http.StatusUnauthorized},
	} {
		body, _ := json.Marshal(tc.s)
		rq, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/traces/sightings", bytes.NewReader(body))
		if tc.token != "" {
			rq.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("sighting %+v with token %q: got %d, want %d", tc.s, tc.token, resp.StatusCode, tc.want)
		}
	}
	got, err := tab.Traces().Get(alice, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Hops) != 1 || got.Hops[0].Service != "api" || got.Hops[0].Seen != 1 || got.Hops[0].Without != 1 {
		t.Errorf("recorded hops: got %+v, want only ns/api, seen once and once without the header", got.Hops)
	}
}

// TestControlTraces: a verified caller opens a trace and reads it; another
// identity is refused it (403), an unknown id is 404, no credential 401.
func TestControlTraces(t *testing.T) {
	c, _, _ := newTestControl(t)
	c.icpt = NewIntercepts(0, nil)
	srv := httptest.NewServer(c)
	defer srv.Close()
	resp, err := postAs(srv.URL+"/v1/traces", "user:alice", []byte(`{"window_seconds": 5}`))
	if err != nil {
		t.Fatal(err)
	}
	var tr api.Trace
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusOK || tr.Owner != "alice" {
		t.Fatalf("start: %d %+v %v", resp.StatusCode, tr, err)
	}
	resp.Body.Close()
	c.icpt.Traces().Record("ns", "api", tr.ID)
	get := func(token, id string) (int, api.Trace) {
		rq, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/traces/"+id, nil)
		if token != "" {
			rq.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got api.Trace
		if resp.StatusCode == http.StatusOK {
			_ = json.NewDecoder(resp.Body).Decode(&got)
		}
		return resp.StatusCode, got
	}
	if code, got := get("user:alice", tr.ID); code != http.StatusOK || len(got.Hops) != 1 || got.Hops[0].Seen != 1 {
		t.Errorf("alice reads her trace: %d %+v", code, got)
	}
	for _, tc := range []struct {
		token, id string
		want      int
	}{{"user:bob", tr.ID, http.StatusForbidden}, {"user:alice", "bt-trace-x", http.StatusNotFound}, {"", tr.ID, http.StatusUnauthorized}} {
		if code, _ := get(tc.token, tc.id); code != tc.want {
			t.Errorf("GET %s as %q: got %d, want %d", tc.id, tc.token, code, tc.want)
		}
	}
}

// TestTraceGatewayHop: connections the owner's workstations open through
// the gateway while the trace is open are its gateway hop (capped); a
// colleague's are not, nor are connections after the trace closed.
func TestTraceGatewayHop(t *testing.T) {
	clk := &traceClock{now: time.Unix(5000, 0)}
	tab := NewIntercepts(0, clk.Now)
	mine, theirs := netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.3")
	tr, err := tab.Traces().Start(t.Context(), alice, api.TraceStartRequest{WindowSeconds: 10}, mine)
	if err != nil {
		t.Fatal(err)
	}
	frontend := netip.MustParseAddrPort("10.96.0.20:80")
	tab.Traces().Flow(theirs, netip.MustParseAddrPort("10.96.0.99:80"))
	tab.Traces().Flow(mine, frontend)
	got, err := tab.Traces().Get(alice, tr.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Gateway) != 1 || got.Gateway[0].Dst != frontend.String() {
		t.Fatalf("gateway hop: got %+v, want one flow to %s", got.Gateway, frontend)
	}
	for range 2 * maxTraceFlows {
		tab.Traces().Flow(mine, frontend)
	}
	if got, _ := tab.Traces().Get(alice, tr.ID); len(got.Gateway) != maxTraceFlows {
		t.Errorf("after many flows: %d recorded, want the cap %d", len(got.Gateway), maxTraceFlows)
	}
	tr2, err := tab.Traces().Start(t.Context(), alice, api.TraceStartRequest{WindowSeconds: 1}, mine)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second)
	tab.Traces().Flow(mine, frontend)
	if got, _ := tab.Traces().Get(alice, tr2.ID); len(got.Gateway) != 0 {
		t.Errorf("a flow after the trace closed was recorded: %+v", got.Gateway)
	}
}
