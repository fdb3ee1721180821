package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/tunnel"
)

// linkConfig is what the gateway link needs.
type linkConfig struct {
	Client    kubernetes.Interface // finds the serving gateway pod
	Namespace string               // the gateway's namespace
	Pod       string               // the ready pod found at start
	PublicKey string               // this workstation's WireGuard public key
	// PrivateKey proves to the gateway that this workstation holds the
	// key (zero = no proof: unit tests' fake gateways).
	PrivateKey tunnel.Key
	// Credentials prove the user's identity on control calls; nil = none.
	Credentials credentials
	// AlsoProxy and AllowAPIServer are registered for the gateway's
	// destination policy.
	AlsoProxy      []string
	AllowAPIServer bool
	// DialPod opens a connection to port of a gateway pod (a port-forward).
	DialPod  func(ctx context.Context, pod string, port int) (net.Conn, error)
	Log      *slog.Logger  // nil discards
	RetryFor time.Duration // how long Register retries; 0 = 30 s
	// Heartbeat overrides the renewal interval; 0 = a third of the TTL the
	// gateway hands out (a minute if it gives none).
	Heartbeat time.Duration
	// Check is how often Run looks at the wall clock (a jump means this
	// machine slept or was stopped: register again at once) and retries a
	// failed registration; 0 = 2 s.
	Check time.Duration
	// Now is the wall clock; nil = time.Now. Run strips the monotonic
	// reading: Linux's monotonic clock stands still during suspend.
	Now func() time.Time
	// WatchPods reports gateway pod changes until ctx ends;
	// nil = cluster.WatchGatewayPods on Client.
	WatchPods func(ctx context.Context, changed func())
}

// wakeSlack is how far past Check the wall clock may move between two of
// Run's looks before it counts as a wake (scheduling jitter stays below).
const wakeSlack = 3 * time.Second

// followTimeout bounds waiting for a ready replacement gateway pod.
const followTimeout = 2 * time.Minute

// gatewayLink is this workstation's standing with the gateway: the pod that
// serves, the registration it handed out, the heartbeat that keeps it (and
// notices a wake), the pod watch that follows a replaced pod within seconds
// on any transport, and the stream dial that follows it too. Its state sits
// behind one lock and is read as copies, so status and metrics never race
// the heartbeat or a redial.
type gatewayLink struct {
	cfg     linkConfig
	control controlClient
	// followMu serialises switching to a replacement pod (the pod watch
	// and a failed stream dial may both notice it).
	followMu sync.Mutex

	mu         sync.Mutex
	pod        string
	streamPod  string // the pod of the last stream connection; "" = no stream transport
	reg        api.RegisterResponse
	gwKey      tunnel.Key // the gateway's public key, for registration proofs
	clusterDNS string     // learnt from the cluster when the gateway names none
	state      string     // connecting, connected, reconnecting
	redials    int64
	// rehandshake re-keys the tunnel after registering with a replacement
	// pod; nil until the tunnel exists (its first handshake is ahead).
	rehandshake func()
	// redialStream drops stream connections that still reach a replaced
	// pod; nil without a stream transport.
	redialStream func(reason string)
}

func newGatewayLink(cfg linkConfig) *gatewayLink {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 30 * time.Second
	}
	if cfg.Check == 0 {
		cfg.Check = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.WatchPods == nil {
		client, ns, log := cfg.Client, cfg.Namespace, cfg.Log
		cfg.WatchPods = func(ctx context.Context, changed func()) {
			cluster.WatchGatewayPods(ctx, client, ns, changed, log)
		}
	}
	l := &gatewayLink{cfg: cfg, pod: cfg.Pod, state: "connecting"}
	l.control = controlClient{
		dial:  func(ctx context.Context) (net.Conn, error) { return cfg.DialPod(ctx, l.Pod(), cluster.ControlPort) },
		where: func() string { return "gateway pod " + cfg.Namespace + "/" + l.Pod() },
		cred:  cfg.Credentials,
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
// upgrade rolls the pod right after install). When the gateway had
// forgotten the key (it restarted, or this machine was away past the
// registration TTL), or the UDP transport now reaches a new pod, the tunnel
// handshakes again at once.
func (l *gatewayLink) Register(ctx context.Context) error {
	return l.register(ctx, false)
}

func (l *gatewayLink) register(ctx context.Context, switched bool) error {
	rctx, cancel := context.WithTimeout(ctx, l.cfg.RetryFor)
	defer cancel()
	backoff := 200 * time.Millisecond
	for {
		admitted, err := l.registerOnce(rctx)
		if err == nil {
			// A stream connection re-keys when it reaches the new pod
			// (StreamDial): its current one may still go to the old pod.
			// UDP has no such moment, and a gateway that forgot us (a
			// restarted container, same pod) has no session either.
			if (admitted || switched) && !(switched && l.streaming()) {
				l.rekey()
			}
			if switched {
				l.leaveReplacedPod()
			}
			return nil
		}
		if rctx.Err() != nil {
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
			switched = true
		}
	}
}

// registerOnce registers once; admitted says the gateway did not know the
// key before this call (and had known it: the first registration of a
// session is not news).
func (l *gatewayLink) registerOnce(ctx context.Context) (admitted bool, err error) {
	req := api.RegisterRequest{PublicKey: l.cfg.PublicKey, AlsoProxy: l.cfg.AlsoProxy, AllowAPIServer: l.cfg.AllowAPIServer}
	var prove func([]byte) ([]byte, error)
	if !l.cfg.PrivateKey.IsZero() {
		gw, err := l.gatewayKey(ctx)
		if err != nil {
			return false, fmt.Errorf("register with gateway: %w", err)
		}
		prove = func(binding []byte) ([]byte, error) { return tunnel.RegistrationProof(l.cfg.PrivateKey, gw, binding) }
	}
	rr, err := l.control.Register(ctx, req, prove)
	if isForbidden(err) {
		l.forgetGatewayKey() // a reinstalled gateway has a new key
	}
	if err != nil {
		return false, fmt.Errorf("register with gateway: %w", err)
	}
	l.mu.Lock()
	was, wasKey := l.reg.Address, l.reg.GatewayPublicKey
	l.reg = rr
	l.mu.Unlock()
	if was != "" && rr.Address != was {
		l.cfg.Log.Warn("gateway handed out a different tunnel address", "was", was, "now", rr.Address)
	}
	rekeyed := wasKey != "" && rr.GatewayPublicKey != wasKey
	return (rr.Admitted || rekeyed) && was != "", nil
}

// gatewayKey is the gateway's public key (GET /v1/info, kept).
func (l *gatewayLink) gatewayKey(ctx context.Context) (tunnel.Key, error) {
	l.mu.Lock()
	k := l.gwKey
	l.mu.Unlock()
	if !k.IsZero() {
		return k, nil
	}
	info, err := l.control.Info(ctx)
	if err != nil {
		return tunnel.Key{}, err
	}
	if k, err = tunnel.ParseKey(info.GatewayPublicKey); err != nil {
		return tunnel.Key{}, fmt.Errorf("gateway public key: %w", err)
	}
	l.mu.Lock()
	l.gwKey = k
	l.mu.Unlock()
	return k, nil
}

func (l *gatewayLink) forgetGatewayKey() {
	l.mu.Lock()
	l.gwKey = tunnel.Key{}
	l.mu.Unlock()
}

// Run keeps this workstation's standing until ctx ends: it renews the
// registration (the gateway forgets silent peers), registers again at once
// after a wake or a failure, and follows a replaced gateway pod as soon as
// the pod watch reports it. It returns after its goroutines exited.
func (l *gatewayLink) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	kick := make(chan struct{}, 1)
	g.Go(func() error {
		l.cfg.WatchPods(ctx, func() {
			select {
			case kick <- struct{}{}:
			default: // one look covers every change so far
			}
		})
		return nil
	})
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-kick:
				l.checkIn(ctx)
			}
		}
	})
	g.Go(func() error { l.heartbeat(ctx); return nil })
	return g.Wait()
}

// heartbeat registers every Heartbeat by the wall clock, and at once when
// the wall clock jumped (a suspend or SIGSTOP: the gateway may have
// forgotten this workstation meanwhile); a failed attempt is retried every
// Check, not at the next heartbeat.
func (l *gatewayLink) heartbeat(ctx context.Context) {
	every := l.cfg.Heartbeat
	if every <= 0 {
		every = time.Duration(l.Registration().TTLSeconds) * time.Second / 3
	}
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(l.cfg.Check)
	defer t.Stop()
	last := l.cfg.Now().Round(0) // the last good registration
	prev := last                 // the previous look
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := l.cfg.Now().Round(0)
		woke := now.Sub(prev) > l.cfg.Check+wakeSlack
		prev = now
		if !woke && !failing && now.Sub(last) < every {
			continue
		}
		if woke {
			l.cfg.Log.Info("this machine was away; registering with the gateway again", "away", now.Sub(last).Round(time.Second))
		}
		err := l.Register(ctx)
		prev = l.cfg.Now().Round(0) // a slow attempt is no sleep
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				l.cfg.Log.Warn("renew registration; retrying", "every", l.cfg.Check, "err", err)
			}
			failing = true
			continue
		}
		if failing {
			l.cfg.Log.Info("registration renewed again")
		}
		failing, last = false, l.cfg.Now().Round(0)
	}
}

// checkIn looks at the gateway after a pod change: it follows a replaced
// pod, and registers again with the same one (a restarted container has
// forgotten this workstation).
func (l *gatewayLink) checkIn(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, followTimeout)
	defer cancel()
	from := l.Pod()
	to, err := l.follow(ctx, from)
	switch {
	case err != nil:
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			l.cfg.Log.Warn("follow the gateway pod", "pod", from, "err", err)
		}
	case to == from:
		if err := l.Register(ctx); err != nil && ctx.Err() == nil {
			l.cfg.Log.Warn("register after a gateway pod change", "err", err)
		}
	}
}

// follow switches to the gateway's ready pod when it is no longer from and
// registers there; it returns the pod to use. When another caller already
// switched away from from, it returns that pod at once.
func (l *gatewayLink) follow(ctx context.Context, from string) (string, error) {
	l.followMu.Lock()
	defer l.followMu.Unlock()
	if cur := l.Pod(); cur != from {
		return cur, nil
	}
	p, err := cluster.WaitGatewayReady(ctx, l.cfg.Client, l.cfg.Namespace)
	if err != nil {
		return "", fmt.Errorf("waiting for a gateway pod: %w", err)
	}
	if p.Name == from {
		return from, nil
	}
	l.setPod(p.Name)
	l.cfg.Log.Info("gateway pod replaced; registering again", "old", from, "new", p.Name)
	return p.Name, l.register(ctx, true)
}

// StreamDial opens a port-forward to the gateway's stream port. When the
// pod was replaced it finds the new one and registers again, so the tunnel
// keeps its address, and the WireGuard session re-handshakes when the
// stream reaches another pod than before.
func (l *gatewayLink) StreamDial(ctx context.Context) (net.Conn, error) {
	pod := l.Pod()
	c, err := l.cfg.DialPod(ctx, pod, cluster.StreamPort)
	if err != nil {
		l.setState("reconnecting")
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		to, ferr := l.follow(wctx, pod)
		cancel()
		if ferr != nil {
			return nil, fmt.Errorf("port-forward to %s: %v; %w", pod, err, ferr)
		}
		pod = to
		if c, err = l.cfg.DialPod(ctx, pod, cluster.StreamPort); err != nil {
			return nil, err
		}
		l.setState("connected")
	}
	l.mu.Lock()
	prev := l.streamPod
	l.streamPod = pod
	l.mu.Unlock()
	if prev != "" && prev != pod {
		// The initiation this triggers is held by the stream bind and
		// sent first on the connection returned here.
		l.rekey()
	}
	l.countRedial()
	return c, nil
}

// streaming reports whether the stream transport is in use.
func (l *gatewayLink) streaming() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streamPod != ""
}

// rekey re-handshakes the tunnel, once it exists.
func (l *gatewayLink) rekey() {
	l.mu.Lock()
	rekey := l.rehandshake
	l.mu.Unlock()
	if rekey != nil {
		rekey()
	}
}

// leaveReplacedPod moves a stream that still reaches another pod than the
// one just registered with: a replaced pod's stream can outlive the switch
// (a force-deleted pod's container runs on for a while, or its
// port-forward hangs without an end), and the re-key waits for the stream
// to reach the new pod (StreamDial).
func (l *gatewayLink) leaveReplacedPod() {
	l.mu.Lock()
	from, to, redial := l.streamPod, l.pod, l.redialStream
	l.mu.Unlock()
	if from == "" || from == to || redial == nil {
		return
	}
	redial(fmt.Sprintf("gateway pod %s was replaced by %s", from, to))
}

// OnStreamStale sets what drops stream connections that reach a replaced pod.
func (l *gatewayLink) OnStreamStale(redial func(reason string)) {
	l.mu.Lock()
	l.redialStream = redial
	l.mu.Unlock()
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
