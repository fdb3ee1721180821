package devflow

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/session"
)

func TestChain(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	seen := func(svc string, ms int) api.TraceHop {
		return api.TraceHop{Namespace: "shop", Service: svc, Seen: 1, FirstSeen: at(ms)}
	}
	without := func(svc string, ms int) api.TraceHop {
		return api.TraceHop{Namespace: "shop", Service: svc, Without: 1, FirstWithout: at(ms)}
	}
	for _, tc := range []struct {
		name        string
		hops        []api.TraceHop // as the gateway answers them: sorted by name
		wantRender  string
		wantVerdict string
		wantExit    int
	}{
		{
			name:        "all propagate",
			hops:        []api.TraceHop{seen("api", 2), seen("frontend", 1), seen("stats", 3)},
			wantRender:  "frontend ✓ → api ✓ → stats ✓",
			wantVerdict: "propagated: every participating Service saw Kubernetes-Route-As (3)",
		},
		{
			name:        "api drops it on its call to stats",
			hops:        []api.TraceHop{seen("api", 2), seen("frontend", 1), without("stats", 3)},
			wantRender:  `frontend ✓ → api ✓ → stats ✗ "api dropped it on its call to stats"`,
			wantVerdict: "dropped: stats was called without Kubernetes-Route-As: api dropped it on its call to stats",
			wantExit:    1,
		},
		{
			name:        "a Service seen with the value and also called without it is fine",
			hops:        []api.TraceHop{seen("api", 2), {Namespace: "shop", Service: "frontend", Seen: 1, FirstSeen: at(1), Without: 3, FirstWithout: at(0)}},
			wantRender:  "frontend ✓ → api ✓",
			wantVerdict: "propagated: every participating Service saw Kubernetes-Route-As (2)",
		},
		{
			name:        "lost before the first participating Service, and downstream of a drop",
			hops:        []api.TraceHop{without("api", 2), without("stats", 3)},
			wantRender:  `api ✗ "called without the header before any participating Service saw it: it was lost on the way in (a Service without a bridgetun sidecar, or a proxy in front of it)" → stats ✗ "called without it, after api, which had lost it already"`,
			wantVerdict: "dropped: api was called without Kubernetes-Route-As: called without the header before any participating Service saw it",
			wantExit:    1,
		},
		{
			name:        "another namespace",
			hops:        []api.TraceHop{seen("frontend", 1), {Namespace: "billing", Service: "ledger", Seen: 1, FirstSeen: at(2)}},
			wantRender:  "frontend ✓ → billing/ledger ✓",
			wantVerdict: "propagated",
		},
		{
			name:        "nothing reported",
			wantRender:  "",
			wantVerdict: "inconclusive: no participating Service reported the request",
			wantExit:    2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := TraceResult{ID: "bt-trace-1", Method: "GET", URL: "http://frontend/", Status: 200}
			r.Chain, r.Verdict, r.Reason = Chain(tc.hops)
			var b bytes.Buffer
			r.Render(&b, "shop")
			lines := strings.Split(strings.TrimSpace(b.String()), "\n")
			if lines[0] != "trace bt-trace-1: GET http://frontend/ → 200 OK" {
				t.Errorf("first line: got %q", lines[0])
			}
			chain, verdict := "", lines[len(lines)-1]
			if len(lines) == 3 {
				chain = lines[1]
			}
			if chain != tc.wantRender {
				t.Errorf("chain:\n got %s\nwant %s", chain, tc.wantRender)
			}
			if !strings.HasPrefix(verdict, tc.wantVerdict) {
				t.Errorf("verdict:\n got %s\nwant %s…", verdict, tc.wantVerdict)
			}
			if got := r.ExitCode(); got != tc.wantExit {
				t.Errorf("exit code: got %d, want %d", got, tc.wantExit)
			}
		})
	}
}

// fakeTraceSession is a session whose gateway records a hop for every
// request the test's "service" answers with the trace's value.
type fakeTraceSession struct {
	st   session.Status
	mu   sync.Mutex
	id   string
	hops []api.TraceHop
	err  error
}

func (f *fakeTraceSession) Status(context.Context) (session.Status, error) { return f.st, f.err }
func (f *fakeTraceSession) StartTrace(_ context.Context, req api.TraceStartRequest) (api.Trace, error) {
	if req.WindowSeconds < 5 {
		return api.Trace{}, errors.New("window too short for the request")
	}
	f.id = api.TracePrefix + "0123456789abcdef"
	return api.Trace{ID: f.id}, nil
}
func (f *fakeTraceSession) Trace(_ context.Context, id string) (api.Trace, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != f.id {
		return api.Trace{}, errors.New("unknown trace")
	}
	return api.Trace{ID: id, Hops: f.hops}, nil
}

// TestTraceWorkflow: the request carries the trace's value in place of the
// caller's own route-as header, with the caller's other headers, straight
// out in TUN mode; the chain comes from what the gateway recorded.
func TestTraceWorkflow(t *testing.T) {
	f := &fakeTraceSession{st: session.Status{State: "connected", Mode: "tun", Namespace: "shop"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(api.RouteAsHeader) == f.id && r.Header.Get("X-Tenant") == "blue" {
			f.mu.Lock()
			f.hops = append(f.hops, api.TraceHop{Namespace: "shop", Service: "frontend", Seen: 1, FirstSeen: time.Now()})
			f.mu.Unlock()
		}
		w.WriteHeader(http.StatusTeapot)
	}))
	defer srv.Close()
	h := http.Header{"X-Tenant": {"blue"}, api.RouteAsHeader: {"mine"}}
	r, err := Trace(t.Context(), TraceConfig{Session: f, URL: srv.URL + "/x", Header: h, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != http.StatusTeapot || r.Verdict != TracePropagated || len(r.Chain) != 1 || r.ID != f.id || r.Error != "" {
		t.Errorf("result: got %+v", r)
	}
	// A request that fails is in the result; the chain still comes back.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	r, err = Trace(t.Context(), TraceConfig{Session: f, URL: dead.URL + "/", Timeout: time.Second})
	if err != nil || r.Error == "" || r.ExitCode() != 1 {
		t.Errorf("request to a closed port: %+v, %v; want the failure in the result and exit 1", r, err)
	}
	if _, err := Trace(t.Context(), TraceConfig{Session: f, URL: "frontend"}); err == nil || !strings.Contains(err.Error(), "http://") {
		t.Errorf("URL without a scheme: got %v, want a hint at http://", err)
	}
	f.err = session.ErrNotRunning
	if _, err := Trace(t.Context(), TraceConfig{Session: f, URL: srv.URL}); !errors.Is(err, session.ErrNotRunning) {
		t.Errorf("no session: got %v, want ErrNotRunning", err)
	}
}

// TestTraceTransport: in netstack mode the request goes through the
// session's HTTP proxy (else its SOCKS5 proxy) with their credentials; in
// TUN mode through no proxy, whatever the environment says.
func TestTraceTransport(t *testing.T) {
	t.Setenv("HTTP_PROXY", "http://elsewhere:3128")
	req, _ := http.NewRequest(http.MethodGet, "http://frontend/", nil)
	for _, tc := range []struct {
		st   session.Status
		want string
	}{
		{session.Status{Mode: "tun"}, ""},
		{session.Status{Mode: "netstack", HTTPProxy: "127.0.0.1:1080", SOCKSProxy: "127.0.0.1:1081",
			ProxyAuth: &session.ProxyAuth{HTTP: session.ProxyCredentials{User: "u", Password: "p"}}}, "http://u:p@127.0.0.1:1080"},
		{session.Status{Mode: "netstack", SOCKSProxy: "127.0.0.1:1081"}, "socks5://127.0.0.1:1081"},
	} {
		rt, err := sessionTransport(tc.st)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if proxy := rt.(*http.Transport).Proxy; proxy != nil {
			pu, err := proxy(req)
			if err != nil {
				t.Fatal(err)
			}
			if pu != nil {
				got = pu.String()
			}
		}
		if got != tc.want {
			t.Errorf("mode %s: proxy %q, want %q", tc.st.Mode, got, tc.want)
		}
	}
	if _, err := sessionTransport(session.Status{Mode: "netstack"}); err == nil {
		t.Error("netstack without proxies: no error")
	}
}

// TestTraceRenderGatewayHop: the gateway's forwarded connections start the
// chain, each destination once.
func TestTraceRenderGatewayHop(t *testing.T) {
	at := time.Unix(100, 0)
	r := TraceResult{ID: "bt-trace-1", Method: "GET", URL: "http://frontend/", Status: 200,
		Gateway: []api.TraceFlow{{Dst: "10.96.0.20:80", At: at}, {Dst: "10.96.0.20:80", At: at}}}
	r.Chain, r.Verdict, r.Reason = Chain([]api.TraceHop{{Namespace: "shop", Service: "frontend", Seen: 1, FirstSeen: at}})
	var b bytes.Buffer
	r.Render(&b, "shop")
	if want := "gateway ✓ (10.96.0.20:80) → frontend ✓\n"; !strings.Contains(b.String(), want) {
		t.Errorf("render:\n%s\nwant a line %q", b.String(), want)
	}
}
