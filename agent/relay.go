package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/netlimit"
	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/splice"
)

// Relay serves sidecars on the pod network (see the protocol in
// agent/api): route tables by long poll, and CONNECT into a workstation's
// tunnel. A sidecar authenticates with its pod's projected ServiceAccount
// token (audience api.RelayTokenAudience, rotated by the kubelet), which
// the relay verifies with the API server and binds: the token's pod must
// back the Service whose routes it asks for, and it may CONNECT only to
// the targets of that Service's routes.
type Relay struct {
	tab     *Intercepts
	auth    Authenticator
	pods    *podCache
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	timeout time.Duration
	poll    time.Duration
	drain   time.Duration
	log     *slog.Logger
	conns   *prometheus.CounterVec
	refused *prometheus.CounterVec
	holders *Holders // relay hits and misses per developer; nil = not counted

	mu      sync.Mutex
	live    map[net.Conn]net.Conn // relays in flight: sidecar side → workstation side
	closing bool                  // Run is draining: no new relays
	idle    chan struct{}         // closed and replaced whenever a relay ends
}

// RelayConfig configures the relay.
type RelayConfig struct {
	Intercepts *Intercepts
	// Auth verifies sidecars' tokens (TokenReview for
	// api.RelayTokenAudience); nil refuses every request.
	Auth Authenticator
	// Pods tells whether a sidecar's pod backs a Service; nil refuses
	// every request.
	Pods SidecarPods
	// Dial reaches a workstation's tunnel address (the gateway netstack's DialContext).
	Dial        func(ctx context.Context, network, address string) (net.Conn, error)
	DialTimeout time.Duration // 0 = 2 s
	PollTimeout time.Duration // 0 = 25 s: longest a route poll waits
	// DrainTimeout: 0 = 3 s. When Run's ctx ends, relays in flight get this
	// long to finish before they are cut (a gateway being replaced or
	// uninstalled should not fail requests it already carries).
	DrainTimeout time.Duration
	Registerer   prometheus.Registerer // nil = no metrics
	Log          *slog.Logger          // nil discards
	Holders      *Holders              // counts relays per developer; nil = not
}

// NewRelay returns the relay handler.
func NewRelay(cfg RelayConfig) *Relay {
	r := &Relay{tab: cfg.Intercepts, auth: cfg.Auth, pods: newPodCache(cfg.Pods, podCacheTTL), dial: cfg.Dial, timeout: cfg.DialTimeout, poll: cfg.PollTimeout,
		drain: cfg.DrainTimeout, log: cfg.Log, holders: cfg.Holders, live: map[net.Conn]net.Conn{}, idle: make(chan struct{})}
	if r.timeout == 0 {
		r.timeout = 2 * time.Second
	}
	if r.drain == 0 {
		r.drain = 3 * time.Second
	}
	if r.poll == 0 {
		r.poll = 25 * time.Second
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = obs.Component(r.log, "relay")
	r.conns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridgetun_gateway_relay_connections_total",
		Help: "Sidecar connections relayed into workstation tunnels, by result (ok, denied, dial_failed).",
	}, []string{"result"})
	r.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridgetun_gateway_relay_refused_total",
		Help: "Sidecar requests the relay refused for their credential, by reason (unauthenticated, forbidden, unavailable).",
	}, []string{"reason"})
	if cfg.Registerer != nil {
		_ = cfg.Registerer.Register(r.conns)
		_ = cfg.Registerer.Register(r.refused)
		_ = cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bridgetun_gateway_intercepts",
			Help: "Live intercepts (leases not expired).",
		}, func() float64 { return float64(len(cfg.Intercepts.List(""))) }))
	}
	return r
}

// ServeHTTP serves GET /v1/routes, CONNECT and POST /v1/traces/sightings.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	isRoutes := req.Method == http.MethodGet && req.URL.Path == "/v1/routes"
	isSighting := req.Method == http.MethodPost && req.URL.Path == "/v1/traces/sightings"
	if req.Method != http.MethodConnect && !isRoutes && !isSighting {
		http.NotFound(w, req)
		return
	}
	pod, err := r.sidecar(req)
	if err != nil {
		r.refuse(w, err)
		return
	}
	if req.Method == http.MethodConnect {
		r.connect(w, req, pod)
		return
	}
	if isSighting {
		r.serveSighting(w, req, pod) // trace_http.go
		return
	}
	q := req.URL.Query()
	ns, svc := q.Get("namespace"), q.Get("service")
	if err := r.backs(req.Context(), pod, ns, svc); err != nil {
		r.refuse(w, err)
		return
	}
	after, _ := strconv.ParseUint(q.Get("after"), 10, 64)
	ctx, cancel := context.WithTimeout(req.Context(), r.poll)
	defer cancel()
	// A trace's start waits for open polls to fetch its epoch (trace.go).
	defer r.tab.Traces().Polling(pod.UID+"/"+svc, after)()
	defer r.tab.Sidecars().Polling(ns, svc, pod.Name)() // doctor and status show who polls
	tab := r.tab.Wait(ctx, ns, svc, after)
	tab.TraceEpoch = r.tab.Traces().Epoch()
	writeJSON(w, tab)
}

// sidecar verifies the request's bearer token: a projected ServiceAccount
// token for api.RelayTokenAudience, bound to a pod. Errors wrap
// ErrUnauthenticated or ErrForbidden, or are the API server's failure.
func (r *Relay) sidecar(req *http.Request) (SidecarPod, error) {
	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return SidecarPod{}, fmt.Errorf("%w: no bearer token: the sidecar presents its pod's ServiceAccount token for audience %q", ErrUnauthenticated, api.RelayTokenAudience)
	}
	if r.auth == nil {
		return SidecarPod{}, fmt.Errorf("%w: this gateway verifies no sidecar tokens", ErrUnauthenticated)
	}
	id, err := r.auth.AuthenticateToken(req.Context(), token, []string{api.RelayTokenAudience})
	if err != nil {
		return SidecarPod{}, fmt.Errorf("sidecar token: %w", err)
	}
	ns, sa, ok := serviceAccountOf(id.User)
	if !ok {
		return SidecarPod{}, fmt.Errorf("%w: %s is not a ServiceAccount: only a sidecar's pod token is accepted", ErrForbidden, id.User)
	}
	name, uid := id.Pod()
	if name == "" || uid == "" {
		return SidecarPod{}, fmt.Errorf("%w: the token of %s is not bound to a pod", ErrForbidden, id.User)
	}
	return SidecarPod{Namespace: ns, Name: name, UID: uid, ServiceAccount: sa}, nil
}

// backs checks that pod backs Service ns/svc.
func (r *Relay) backs(ctx context.Context, pod SidecarPod, ns, svc string) error {
	if ns == "" || svc == "" {
		return fmt.Errorf("%w: namespace and service are required", ErrForbidden)
	}
	if ns != pod.Namespace {
		return fmt.Errorf("%w: pod %s/%s may not follow the routes of namespace %s", ErrForbidden, pod.Namespace, pod.Name, ns)
	}
	ok, err := r.pods.backs(ctx, pod, svc)
	if err != nil {
		return fmt.Errorf("check pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	if !ok {
		return fmt.Errorf("%w: pod %s/%s is not an intercepted pod of service %s", ErrForbidden, pod.Namespace, pod.Name, svc)
	}
	return nil
}

// refuse answers a credential failure: 401, 403, or 503 when the API
// server could not be asked (the sidecar retries).
func (r *Relay) refuse(w http.ResponseWriter, err error) {
	code, reason := http.StatusServiceUnavailable, "unavailable"
	switch {
	case errors.Is(err, ErrUnauthenticated):
		code, reason = http.StatusUnauthorized, "unauthenticated"
	case errors.Is(err, ErrForbidden):
		code, reason = http.StatusForbidden, "forbidden"
	}
	r.refused.WithLabelValues(reason).Inc()
	r.log.Debug("sidecar refused", "reason", reason, "err", err)
	http.Error(w, "relay: "+err.Error(), code)
}

// serviceAccountOf splits "system:serviceaccount:NS:SA".
func serviceAccountOf(user string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	return ns, sa, ok && ns != "" && sa != "" && !strings.Contains(sa, ":")
}

func (r *Relay) connect(w http.ResponseWriter, req *http.Request, pod SidecarPod) {
	target := req.Host
	svcs := r.tab.TargetServices(pod.Namespace, target)
	if len(svcs) == 0 {
		r.conns.WithLabelValues("denied").Inc()
		http.Error(w, fmt.Sprintf("relay: %s is not a live intercept's target in namespace %s", target, pod.Namespace), http.StatusForbidden)
		return
	}
	var err error
	for _, svc := range svcs {
		if err = r.backs(req.Context(), pod, pod.Namespace, svc); err == nil {
			break
		}
	}
	if err != nil {
		r.conns.WithLabelValues("denied").Inc()
		r.refuse(w, fmt.Errorf("CONNECT %s (the target of %s): %w", target, strings.Join(svcs, ", "), err))
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), r.timeout)
	up, err := r.dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		r.conns.WithLabelValues("dial_failed").Inc()
		r.holders.Relayed(target, false)
		r.log.Debug("dial workstation", "target", target, "err", err)
		http.Error(w, fmt.Sprintf("relay: dial %s: %v", target, err), http.StatusBadGateway)
		return
	}
	defer up.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "relay: cannot hijack", http.StatusInternalServerError)
		return
	}
	down, buf, err := hj.Hijack()
	if err != nil {
		r.log.Warn("hijack", "err", err)
		return
	}
	defer down.Close()
	if !r.track(down, up) {
		return // draining: the sidecar passes the connection through
	}
	defer r.untrack(down)
	if _, err := down.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		return
	}
	r.conns.WithLabelValues("ok").Inc()
	r.holders.Relayed(target, true)
	// Bytes the sidecar sent after the request head are in buf; with none,
	// down goes as it is. Not req.Context(): net/http cancels it when its
	// reader under buf meets the sidecar's EOF, even after the hijack, which
	// would cut the answer to a half-close. Run's drain ends relays by
	// closing their conns.
	var in net.Conn = down
	if buf.Reader.Buffered() > 0 {
		in = &splice.BufferedConn{Conn: down, R: buf.Reader}
	}
	if _, err := splice.Relay(context.Background(), in, up); err != nil {
		r.log.Debug("relay ended", "target", target, "err", err)
	}
}

// track records a relay in flight; false once Run is draining.
func (r *Relay) track(down, up net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	r.live[down] = up
	return true
}

func (r *Relay) untrack(down net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.live, down)
	close(r.idle)
	r.idle = make(chan struct{})
}

// drainRelays waits up to the drain timeout for the relays in flight to
// end, then cuts the rest.
func (r *Relay) drainRelays() {
	r.mu.Lock()
	r.closing = true
	r.mu.Unlock()
	deadline := time.NewTimer(r.drain)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		n, idle := len(r.live), r.idle
		r.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-idle:
		case <-deadline.C:
			r.mu.Lock()
			r.log.Info("cutting relays still open after the drain", "count", len(r.live), "drain", r.drain.String())
			for down, up := range r.live {
				_ = down.Close()
				_ = up.Close()
			}
			r.mu.Unlock()
			return
		}
	}
}

// Run serves the relay on ln until ctx ends. Then it stops accepting and
// ends the route polls (sidecars drop their routes and pass new connections
// through), and returns once the relays in flight have finished or the
// drain timeout has cut them.
func (r *Relay) Run(ctx context.Context, ln net.Listener) error {
	// The header timeout bounds the CONNECT request phase; after the hijack
	// the relay is raw bytes with no deadline.
	srv := &http.Server{Handler: r, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	err := srv.Serve(netlimit.Listener(ln, netlimit.MaxRelay, r.refused.WithLabelValues("connection_cap")))
	r.drainRelays()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}
