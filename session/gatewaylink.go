package session

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// linkConfig is what the gateway link needs.
type linkConfig struct {
	Client    kubernetes.Interface // finds the serving gateway pod
	Namespace string               // the gateway's namespace
	Pod       string               // the ready pod found at start
	PublicKey string               // this workstation's WireGuard public key
	// DialPod opens a connection to port of a gateway pod (a port-forward).
	DialPod  func(ctx context.Context, pod string, port int) (net.Conn, error)
	Log      *slog.Logger  // nil discards
	RetryFor time.Duration // how long Register retries; 0 = 30 s
	// Heartbeat overrides the renewal interval; 0 = a third of the TTL the
	// gateway hands out (a minute if it gives none).
	Heartbeat time.Duration
}

// gatewayLink is this workstation's standing with the gateway: the pod that
// serves, the registration it handed out, the heartbeat that keeps it, and
// the stream dial that follows the pod when it is replaced. Its state sits
// behind one lock and is read as copies, so status and metrics never race
// the heartbeat or a redial.
type gatewayLink struct {
	cfg     linkConfig
	control controlClient

	mu         sync.Mutex
	pod        string
	reg        api.RegisterResponse
	clusterDNS string // learnt from the cluster when the gateway names none
	state      string // connecting, connected, reconnecting
	redials    int64
	// rehandshake re-keys the tunnel after registering with a replacement
	// pod; nil until the tunnel exists (its first handshake is ahead).
	rehandshake func()
}

func newGatewayLink(cfg linkConfig) *gatewayLink {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 30 * time.Second
	}
	l := &gatewayLink{cfg: cfg, pod: cfg.Pod, state: "connecting"}
	l.control = controlClient{
		dial:  func(ctx context.Context) (net.Conn, error) { return cfg.DialPod(ctx, l.Pod(), cluster.ControlPort) },
		where: func() string { return "gateway pod " + cfg.Namespace + "/" + l.Pod() },
	}
	return l
}

// Pod is the gateway pod currently in use.
func (l *gatewayLink) Pod() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pod
}

func (l *gatewayLink) setPod(name string) {
	l.mu.Lock()
	l.pod = name
	l.mu.Unlock()
}

// Registration is the gateway's last answer, with the cluster resolver
// filled in from discovery when the gateway named none.
func (l *gatewayLink) Registration() api.RegisterResponse {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reg
	if r.ClusterDNS == "" {
		r.ClusterDNS = l.clusterDNS
	}
	return r
}

// SetClusterDNS records the resolver discovery found; it survives every
// later registration (the heartbeat used to wipe it).
func (l *gatewayLink) SetClusterDNS(addr string) {
	l.mu.Lock()
	l.clusterDNS = addr
	l.mu.Unlock()
}

// State is connecting, connected or reconnecting.
func (l *gatewayLink) State() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

func (l *gatewayLink) setState(s string) {
	l.mu.Lock()
	l.state = s
	l.mu.Unlock()
}

// Reconnects counts stream redials after the first connection.
func (l *gatewayLink) Reconnects() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(0, l.redials-1)
}

// Register admits this workstation's key, retrying for RetryFor: a pod that
// just became ready may still be opening its listeners, and a port-forward
// can fail transiently. Between tries it asks again which pod serves (an
// upgrade rolls the pod right after install).
func (l *gatewayLink) Register(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RetryFor)
	defer cancel()
	backoff := 200 * time.Millisecond
	for {
		err := l.registerOnce(rctx)
		if err == nil || rctx.Err() != nil {
			return err
		}
		l.cfg.Log.Debug("register failed, retrying", "err", err, "in", backoff)
		select {
		case <-rctx.Done():
			return err
		case <-time.After(backoff): // retry backoff
		}
		backoff = min(2*backoff, 3*time.Second)
		if p, werr := cluster.WaitGatewayReady(rctx, l.cfg.Client, l.cfg.Namespace); werr == nil && p.Name != l.Pod() {
			l.cfg.Log.Info("gateway pod changed; registering with the new one", "old", l.Pod(), "new", p.Name)
			l.setPod(p.Name)
		}
	}
}

func (l *gatewayLink) registerOnce(ctx context.Context) error {
	rr, err := l.control.Register(ctx, l.cfg.PublicKey)
	if err != nil {
		return fmt.Errorf("register with gateway: %w", err)
	}
	l.mu.Lock()
	was := l.reg.Address
	l.reg = rr
	l.mu.Unlock()
	if was != "" && rr.Address != was {
		l.cfg.Log.Warn("gateway handed out a different tunnel address", "was", was, "now", rr.Address)
	}
	return nil
}

// Run renews the registration (the gateway forgets silent peers) until ctx
// ends.
func (l *gatewayLink) Run(ctx context.Context) error {
	every := l.cfg.Heartbeat
	if every <= 0 {
		every = time.Duration(l.Registration().TTLSeconds) * time.Second / 3
	}
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := l.Register(ctx); err != nil && ctx.Err() == nil {
				l.cfg.Log.Warn("renew registration", "err", err)
			}
		}
	}
}

// StreamDial opens a port-forward to the gateway's stream port. When the
// pod was replaced it finds the new one and registers again, so the tunnel
// keeps its address and the WireGuard session re-handshakes.
func (l *gatewayLink) StreamDial(ctx context.Context) (net.Conn, error) {
	pod := l.Pod()
	c, err := l.cfg.DialPod(ctx, pod, cluster.StreamPort)
	if err == nil {
		l.countRedial()
		return c, nil
	}
	l.setState("reconnecting")
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p, werr := cluster.WaitGatewayReady(wctx, l.cfg.Client, l.cfg.Namespace)
	if werr != nil {
		return nil, fmt.Errorf("port-forward to %s: %v; waiting for a gateway pod: %w", pod, err, werr)
	}
	if p.Name != pod {
		l.setPod(p.Name)
		l.cfg.Log.Info("gateway pod replaced; registering again", "old", pod, "new", p.Name)
		if err := l.Register(ctx); err != nil {
			return nil, err
		}
		l.mu.Lock()
		rekey := l.rehandshake
		l.mu.Unlock()
		if rekey != nil {
			// The initiation this triggers is held by the stream bind and
			// sent first on the connection returned below.
			rekey()
		}
	}
	c, err = l.cfg.DialPod(ctx, p.Name, cluster.StreamPort)
	if err != nil {
		return nil, err
	}
	l.countRedial()
	l.setState("connected")
	return c, nil
}

// OnReplaced sets what re-keys the tunnel after a pod replacement.
func (l *gatewayLink) OnReplaced(rehandshake func()) {
	l.mu.Lock()
	l.rehandshake = rehandshake
	l.mu.Unlock()
}

func (l *gatewayLink) countRedial() {
	l.mu.Lock()
	l.redials++
	l.mu.Unlock()
}
