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
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestRelayDrain: when the gateway stops (its pod replaced or uninstalled),
// a relay in flight keeps working until it ends by itself, new CONNECTs are
// refused, and Run returns once the relay is done; a relay still open when
// the drain timeout passes is cut.
func TestRelayDrain(t *testing.T) {
	for _, tc := range []struct {
		name       string
		drain      time.Duration
		clientEnds bool // the sidecar's connection ends by itself during the drain
	}{
		{name: "relay finishes within the drain", drain: time.Minute, clientEnds: true},
		{name: "relay cut at the drain timeout", drain: 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewIntercepts(0, nil)
			r := req(keyA, "")
			r.Port = echoServer(t).Addr().(*net.TCPAddr).Port
			if _, err := tab.Add(r, netip.MustParseAddr("127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			relay := NewRelay(RelayConfig{Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, Dial: (&net.Dialer{}).DialContext, DrainTimeout: tc.drain})
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx, ln) }()

			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			target := fmt.Sprintf("127.0.0.1:%d", r.Port)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer tok\r\n\r\n", target, target)
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT: %v, %v", resp, err)
			}
			echoLine := func(s string) (string, error) {
				if _, err := fmt.Fprint(c, s); err != nil {
					return "", err
				}
				return br.ReadString('\n')
			}
			if got, err := echoLine("before\n"); got != "before\n" {
				t.Fatalf("echo before the stop: %q, %v", got, err)
			}

			cancel() // the gateway is told to stop
			if err := waitRefused(ln.Addr().String()); err != nil {
				t.Fatal(err)
			}
			if tc.clientEnds {
				if got, err := echoLine("during the drain\n"); got != "during the drain\n" {
					t.Fatalf("echo during the drain: %q, %v (want the relay to keep working)", got, err)
				}
				select {
				case err := <-done:
					t.Fatalf("Run returned (%v) while a relay was in flight", err)
				default:
				}
				c.Close()
			} else {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := br.ReadString('\n'); err == nil || isTimeout(err) {
					t.Fatalf("read from a relay past the drain timeout: %v, want it cut", err)
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10 s of its relay ending")
			}
		})
	}
}

// waitRefused dials addr until it refuses (the listener closed), for at
// most 10 s.
func waitRefused(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(10 * time.Millisecond) // polling the listener's close, bounded above
	}
	return fmt.Errorf("%s still accepts 10 s after the stop", addr)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestRelayConnectHalfClose: bytes a sidecar sends with its CONNECT (in
// the same write, so the server has buffered them) reach the workstation
// first, and the sidecar's half-close reaches it as EOF while the answer
// still comes back; the relay then ends and Run returns.
func TestRelayConnectHalfClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		early string // sent in the CONNECT's own write
	}{
		{"no early bytes", ""},
		{"early bytes", "early\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewIntercepts(0, nil)
			r := req(keyA, "")
			r.Port = echoServer(t).Addr().(*net.TCPAddr).Port
			if _, err := tab.Add(r, netip.MustParseAddr("127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			relay := NewRelay(RelayConfig{Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, Dial: (&net.Dialer{}).DialContext, Log: testkit.Logger(t)})
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx, ln) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()

			d, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c := d.(*net.TCPConn)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			target := fmt.Sprintf("127.0.0.1:%d", r.Port)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer tok\r\n\r\n%s", target, target, tc.early)
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT: %v, %v", resp, err)
			}
			fmt.Fprint(c, "late\n")
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(br)
			if want := tc.early + "late\n"; err != nil || string(got) != want {
				t.Errorf("echo after the half-close: got %q, %v; want %q then EOF", got, err, want)
			}
		})
	}
}

// The relay's credential seam, faked: tokens as the API server's
// TokenReview would answer them, and pods as the gateway's client-go
// check would.
type fakeSidecarToken struct {
	id        Identity
	audiences []string // the token's own audiences
	expired   bool
}

type fakeSidecarAuth struct {
	tokens map[string]fakeSidecarToken
	down   bool // the API server cannot be reached
}

func (f *fakeSidecarAuth) AuthenticateToken(_ context.Context, token string, audiences []string) (Identity, error) {
	if f.down {
		return Identity{}, errors.New("token review: connection refused")
	}
	tk, ok := f.tokens[token]
	switch {
	case !ok:
		return Identity{}, fmt.Errorf("%w: invalid bearer token", ErrUnauthenticated)
	case tk.expired:
		return Identity{}, fmt.Errorf("%w: token has expired", ErrUnauthenticated)
	case !slices.ContainsFunc(audiences, func(a string) bool { return slices.Contains(tk.audiences, a) }):
		return Identity{}, fmt.Errorf("%w: token audiences %v is invalid for the target audiences %v", ErrUnauthenticated, tk.audiences, audiences)
	}
	return tk.id, nil
}

func (f *fakeSidecarAuth) AuthenticateCSR(context.Context, string, string) (Identity, error) {
	return Identity{}, ErrUnauthenticated
}

type fakePods struct {
	mu    sync.Mutex
	backs map[SidecarPod][]string // pod → the Services it backs
	calls int
}

func (f *fakePods) Backs(_ context.Context, pod SidecarPod, svc string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	return slices.Contains(f.backs[pod], svc), nil
}

// podToken is a projected ServiceAccount token of pod ns/name (SA default).
func podToken(ns, name string, audiences ...string) fakeSidecarToken {
	return fakeSidecarToken{id: Identity{
		User: "system:serviceaccount:" + ns + ":default", UID: "sa-uid",
		Extra: map[string][]string{"authentication.kubernetes.io/pod-name": {name}, "authentication.kubernetes.io/pod-uid": {name + "-uid"}},
	}, audiences: audiences}
}

func podOf(ns, name string) SidecarPod {
	return SidecarPod{Namespace: ns, Name: name, UID: name + "-uid", ServiceAccount: "default"}
}

// testSidecarAuth/testSidecarPods: "tok" is pod ns/api-1's relay token,
// and that pod backs Services api and other of namespace ns (the tests
// that are not about credentials).
var (
	testSidecarAuth = &fakeSidecarAuth{tokens: map[string]fakeSidecarToken{"tok": podToken("ns", "api-1", api.RelayTokenAudience)}}
	testSidecarPods = &fakePods{backs: map[SidecarPod][]string{podOf("ns", "api-1"): {"api", "other"}}}
)

// TestRelaySidecarCredentials: the relay takes a sidecar's projected
// ServiceAccount token and binds it to its pod. The pod of one Service
// follows that Service's routes and CONNECTs to their targets only; a pod
// of another Service, a token from another namespace, of another audience,
// expired, of a user or not bound to a pod is refused (401 for what the API
// server does not accept, 403 for who may not), and an API server that
// cannot be asked is 503 (the sidecar retries; no route meanwhile).
func TestRelaySidecarCredentials(t *testing.T) {
	tab := NewIntercepts(0, nil)
	lo := netip.MustParseAddr("127.0.0.1")
	rAPI := req(keyA, "")
	rAPI.Port = echoServer(t).Addr().(*net.TCPAddr).Port
	if _, err := tab.Add(rAPI, lo); err != nil {
		t.Fatal(err)
	}
	rBilling := req(keyB, "")
	rBilling.Service, rBilling.Workload.Name, rBilling.Port = "billing", "billing", echoServer(t).Addr().(*net.TCPAddr).Port
	if _, err := tab.Add(rBilling, lo); err != nil {
		t.Fatal(err)
	}
	apiTarget := fmt.Sprintf("127.0.0.1:%d", rAPI.Port)
	billingTarget := fmt.Sprintf("127.0.0.1:%d", rBilling.Port)

	auth := &fakeSidecarAuth{tokens: map[string]fakeSidecarToken{
		"api-pod":     podToken("ns", "api-1", api.RelayTokenAudience),
		"billing-pod": podToken("ns", "billing-1", api.RelayTokenAudience),
		"other-ns":    podToken("other", "api-1", api.RelayTokenAudience),
		"gone-pod":    podToken("ns", "api-0", api.RelayTokenAudience),
		"api-server":  podToken("ns", "api-1", "https://kubernetes.default.svc"), // the pod's default token
		"expired":     {id: podToken("ns", "api-1").id, audiences: []string{api.RelayTokenAudience}, expired: true},
		"user":        {id: Identity{User: "alice@example.com"}, audiences: []string{api.RelayTokenAudience}},
		"unbound":     {id: Identity{User: "system:serviceaccount:ns:default"}, audiences: []string{api.RelayTokenAudience}},
	}}
	pods := &fakePods{backs: map[SidecarPod][]string{
		podOf("ns", "api-1"):     {"api"},
		podOf("ns", "billing-1"): {"billing"},
		podOf("other", "api-1"):  {"api"},
	}}
	relay := NewRelay(RelayConfig{Intercepts: tab, Auth: auth, Pods: pods, Dial: (&net.Dialer{}).DialContext, Log: testkit.Logger(t)})
	ln := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})

	routes := func(token, ns, svc string) (int, api.RouteTable) {
		t.Helper()
		rq, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+"/v1/routes?namespace="+ns+"&service="+svc+"&after=0", nil)
		if token != "" {
			rq.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(rq)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var tabl api.RouteTable
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&tabl); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, tabl
	}
	connect := func(token, target string) int {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", target, target, token)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			fmt.Fprint(c, "ping\n")
			if line, err := br.ReadString('\n'); line != "ping\n" {
				t.Errorf("CONNECT %s: echo got %q, %v", target, line, err)
			}
		}
		return resp.StatusCode
	}

	for _, tc := range []struct {
		name, token, ns, svc string
		want                 int
	}{
		{"the Service's own pod", "api-pod", "ns", "api", http.StatusOK},
		{"a pod of another Service", "billing-pod", "ns", "api", http.StatusForbidden},
		{"a deleted pod", "gone-pod", "ns", "api", http.StatusForbidden},
		{"a pod of another namespace", "other-ns", "ns", "api", http.StatusForbidden},
		{"no token", "", "ns", "api", http.StatusUnauthorized},
		{"the pod's API-server token (wrong audience)", "api-server", "ns", "api", http.StatusUnauthorized},
		{"an expired token", "expired", "ns", "api", http.StatusUnauthorized},
		{"the old namespace-wide sidecar token", "sidecar-token-from-the-secret", "ns", "api", http.StatusUnauthorized},
		{"a user, not a ServiceAccount", "user", "ns", "api", http.StatusForbidden},
		{"a token bound to no pod", "unbound", "ns", "api", http.StatusForbidden},
		{"no service named", "api-pod", "ns", "", http.StatusForbidden},
	} {
		t.Run("routes/"+tc.name, func(t *testing.T) {
			code, tabl := routes(tc.token, tc.ns, tc.svc)
			if code != tc.want {
				t.Fatalf("GET routes of %s/%s: got %d, want %d", tc.ns, tc.svc, code, tc.want)
			}
			if code == http.StatusOK && (len(tabl.Routes) != 1 || tabl.Routes[0].Target != apiTarget) {
				t.Errorf("routes: got %+v, want the one route to %s", tabl, apiTarget)
			}
		})
	}
	for _, tc := range []struct {
		name, token, target string
		want                int
	}{
		{"its own Service's target", "api-pod", apiTarget, http.StatusOK},
		{"another Service's target", "api-pod", billingTarget, http.StatusForbidden},
		{"that Service's own pod", "billing-pod", billingTarget, http.StatusOK},
		{"a pod of another namespace", "other-ns", apiTarget, http.StatusForbidden},
		{"wrong audience", "api-server", apiTarget, http.StatusUnauthorized},
		{"expired", "expired", apiTarget, http.StatusUnauthorized},
		{"no live target", "api-pod", "127.0.0.1:1", http.StatusForbidden},
	} {
		t.Run("connect/"+tc.name, func(t *testing.T) {
			if got := connect(tc.token, tc.target); got != tc.want {
				t.Errorf("CONNECT %s: got %d, want %d", tc.target, got, tc.want)
			}
		})
	}

	t.Run("API server down", func(t *testing.T) {
		auth.down = true // no request in flight: the subtests above ran in turn
		defer func() { auth.down = false }()
		if code, _ := routes("api-pod", "ns", "api"); code != http.StatusServiceUnavailable {
			t.Errorf("routes while the API server is down: got %d, want 503", code)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		for reason, want := range map[string]float64{"unauthenticated": 6, "forbidden": 7, "unavailable": 1} {
			if got := testutil.ToFloat64(relay.refused.WithLabelValues(reason)); got != want {
				t.Errorf("relay refused{reason=%s}: got %v, want %v", reason, got, want)
			}
		}
	})
}

// TestPodCache: a pod's "yes" is kept for the TTL, a "no" never.
func TestPodCache(t *testing.T) {
	pods := &fakePods{backs: map[SidecarPod][]string{podOf("ns", "api-1"): {"api"}}}
	clock := &fakeClock{t: time.Unix(1000, 0)}
	c := newPodCache(pods, 30*time.Second)
	c.now = clock.now
	ask := func(pod SidecarPod, svc string, want bool, wantCalls int) {
		t.Helper()
		got, err := c.backs(context.Background(), pod, svc)
		if err != nil || got != want || pods.calls != wantCalls {
			t.Fatalf("backs(%s, %s) = %v, %v after %d calls; want %v after %d", pod.Name, svc, got, err, pods.calls, want, wantCalls)
		}
	}
	ask(podOf("ns", "api-1"), "api", true, 1)
	ask(podOf("ns", "api-1"), "api", true, 1) // cached
	ask(podOf("ns", "api-1"), "billing", false, 2)
	ask(podOf("ns", "api-1"), "billing", false, 3) // a no is asked again
	clock.add(31 * time.Second)
	ask(podOf("ns", "api-1"), "api", true, 4) // expired: asked again
	if got, _ := newPodCache(nil, time.Minute).backs(context.Background(), podOf("ns", "api-1"), "api"); got {
		t.Error("a cache with no SidecarPods: got yes, want no")
	}
}
