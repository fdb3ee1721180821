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
	"time"

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
	log     *slog.Logger
	conns   *prometheus.CounterVec
}

// RelayConfig configures the relay.
type RelayConfig struct {
	Intercepts *Intercepts
	Token      string // the sidecar token; "" refuses every request
	// Dial reaches a workstation's tunnel address (the gateway netstack's DialContext).
	Dial        func(ctx context.Context, network, address string) (net.Conn, error)
	DialTimeout time.Duration         // 0 = 2 s
	PollTimeout time.Duration         // 0 = 25 s: longest a route poll waits
	Registerer  prometheus.Registerer // nil = no metrics
	Log         *slog.Logger          // nil discards
}

// NewRelay returns the relay handler.
func NewRelay(cfg RelayConfig) *Relay {
	r := &Relay{tab: cfg.Intercepts, token: cfg.Token, dial: cfg.Dial, timeout: cfg.DialTimeout, poll: cfg.PollTimeout, log: cfg.Log}
	if r.timeout == 0 {
		r.timeout = 2 * time.Second
	}
	if r.poll == 0 {
		r.poll = 25 * time.Second
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.log = r.log.With("component", "relay")
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
	if _, err := down.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")); err != nil {
		return
	}
	r.conns.WithLabelValues("ok").Inc()
	splice.Relay(&splice.BufferedConn{Conn: down, R: buf.Reader}, up)
}

// Run serves the relay on ln until ctx ends.
func (r *Relay) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}
