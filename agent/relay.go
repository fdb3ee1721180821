package agent

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/internal/splice"
)

// Relay serves sidecars on the pod network (see the protocol in routes.go):
// route tables by long poll, and CONNECT into a workstation's tunnel.
type Relay struct {
	tab     *Intercepts
	token   string
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	timeout time.Duration
	poll    time.Duration
	drain   time.Duration
	log     *slog.Logger
	conns   *prometheus.CounterVec

	mu      sync.Mutex
	live    map[net.Conn]net.Conn // relays in flight: sidecar side → workstation side
	closing bool                  // Run is draining: no new relays
	idle    chan struct{}         // closed and replaced whenever a relay ends
}

// RelayConfig configures the relay.
type RelayConfig struct {
	Intercepts *Intercepts
	Token      string // the sidecar token; "" refuses every request
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
}

// NewRelay returns the relay handler.
func NewRelay(cfg RelayConfig) *Relay {
	r := &Relay{tab: cfg.Intercepts, token: cfg.Token, dial: cfg.Dial, timeout: cfg.DialTimeout, poll: cfg.PollTimeout,
		drain: cfg.DrainTimeout, log: cfg.Log, live: map[net.Conn]net.Conn{}, idle: make(chan struct{})}
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
	if cfg.Registerer != nil {
		_ = cfg.Registerer.Register(r.conns)
		_ = cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "bridgetun_gateway_intercepts",
			Help: "Live intercepts (leases not expired).",
		}, func() float64 { return float64(len(cfg.Intercepts.List(""))) }))
	}
	return r
}

// ServeHTTP serves GET /v1/routes and CONNECT.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !r.authorized(req) {
		http.Error(w, "relay: missing or wrong sidecar token", http.StatusUnauthorized)
		return
	}
	switch {
	case req.Method == http.MethodConnect:
		r.connect(w, req)
	case req.Method == http.MethodGet && req.URL.Path == "/v1/routes":
		q := req.URL.Query()
		after, _ := strconv.ParseUint(q.Get("after"), 10, 64)
		ctx, cancel := context.WithTimeout(req.Context(), r.poll)
		defer cancel()
		tab := r.tab.Wait(ctx, q.Get("namespace"), q.Get("service"), after)
		writeJSON(w, tab)
	default:
		http.NotFound(w, req)
	}
}

func (r *Relay) authorized(req *http.Request) bool {
	want := "Bearer " + r.token
	return r.token != "" && subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), []byte(want)) == 1
}

func (r *Relay) connect(w http.ResponseWriter, req *http.Request) {
	target := req.Host
	if !r.tab.TargetAllowed(target) {
		r.conns.WithLabelValues("denied").Inc()
		http.Error(w, fmt.Sprintf("relay: %s is not a live intercept's target", target), http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), r.timeout)
	up, err := r.dial(ctx, "tcp", target)
	cancel()
	if err != nil {
		r.conns.WithLabelValues("dial_failed").Inc()
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
	err := srv.Serve(ln)
	r.drainRelays()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}
