package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/agent/api"
)

// TestTraceReports: in HTTP mode the sidecar reports to the gateway, with
// its pod's token and before the request reaches the original, each
// request carrying a trace value, and while a trace is open (TraceEpoch)
// its first request without the header, once per epoch; other route-as
// values are not reported, and a gateway that fails the report costs the
// request nothing.
func TestTraceReports(t *testing.T) {
	var (
		mu       sync.Mutex
		reports  []api.TraceSighting
		failing  bool
		atArrive []int // len(reports) when each request reached the original
	)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces/sightings" || r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
			return
		}
		var s api.TraceSighting
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if failing {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		reports = append(reports, s)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer gw.Close()
	original := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		atArrive = append(atArrive, len(reports))
		mu.Unlock()
		fmt.Fprintln(w, "original")
	}))
	defer original.Close()

	gc := NewGatewayClient(GatewayClientConfig{Addr: gw.Listener.Addr().String(), Token: staticToken(testToken), Log: testLogger(t)})
	state := &RouteState{}
	ln := listen(t)
	sc, err := New(Config{
		Listener: ln, Original: original.Listener.Addr().String(), Routes: state,
		Dial:      func(context.Context, string) (net.Conn, error) { return nil, errors.New("no workstation here") },
		Sightings: gc.Sightings("shop", "web"), Log: testLogger(t), Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	isolated := []api.Route{{ID: "r1", Target: deadAddr(t), RouteAs: "dev-x", Holder: "alice"}}
	setEpoch := func(e uint64) { state.Set(api.RouteTable{Version: e + 1, Routes: isolated, TraceEpoch: e}) }
	hc := newClient(t, false)
	get := func(routeAs string) {
		t.Helper()
		rq, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
		if routeAs != "" {
			rq.Header.Set(api.RouteAsHeader, routeAs)
		}
		resp, err := hc.Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET with route-as %q: %s", routeAs, resp.Status)
		}
	}
	const traceA, traceB = api.TracePrefix + "aaaaaaaaaaaaaaaa", api.TracePrefix + "bbbbbbbbbbbbbbbb"

	setEpoch(0)
	get(traceA) // reported even before the sidecar knows an epoch
	get("")     // no trace open: not reported
	setEpoch(7)
	get("")
	get("")      // once per epoch
	get("dev-y") // a developer's value: not a trace's
	get(traceA)
	setEpoch(8)
	get("")
	mu.Lock()
	failing = true
	mu.Unlock()
	get(traceB) // the report fails; the request does not

	mu.Lock()
	defer mu.Unlock()
	want := []api.TraceSighting{
		{Namespace: "shop", Service: "web", RouteAs: traceA},
		{Namespace: "shop", Service: "web"},
		{Namespace: "shop", Service: "web", RouteAs: traceA},
		{Namespace: "shop", Service: "web"},
	}
	if fmt.Sprint(reports) != fmt.Sprint(want) {
		t.Errorf("reports:\n got %+v\nwant %+v", reports, want)
	}
	// Each reported request reached the original only after its report.
	if wantArrive := []int{1, 1, 2, 2, 2, 3, 4, 4}; fmt.Sprint(atArrive) != fmt.Sprint(wantArrive) {
		t.Errorf("reports made when each request reached the original: got %v, want %v", atArrive, wantArrive)
	}
}

// TestTraceReportBounded: a gateway that does not answer holds a request
// at most traceReportTimeout, and concurrent header-less requests of one
// epoch share one report.
func TestTraceReportBounded(t *testing.T) {
	block := make(chan struct{})
	var (
		mu    sync.Mutex
		calls int
	)
	tr := newTraceReporter(func(ctx context.Context, _ string) error {
		mu.Lock()
		calls++
		mu.Unlock()
		select {
		case <-block:
		case <-ctx.Done():
		}
		return ctx.Err()
	}, testLogger(t))
	t0 := time.Now()
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() { tr.observe(context.Background(), 3, "") })
	}
	wg.Wait()
	if d := time.Since(t0); d > traceReportTimeout+2*time.Second {
		t.Errorf("requests waited %s for a silent gateway, want about %s", d, traceReportTimeout)
	}
	if calls != 1 {
		t.Errorf("concurrent header-less requests of one epoch: %d reports, want 1", calls)
	}
	close(block)
}
