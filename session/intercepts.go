package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
)

// InterceptSpec is what `bridgetun intercept` asks of the session.
type InterceptSpec struct {
	Service   string `json:"service"`
	Port      string `json:"port,omitempty"` // REMOTE: the Service port's name or number; "" = its only port
	LocalPort int    `json:"local_port"`
	RouteAs   string `json:"route_as,omitempty"` // "" = every request (a full intercept)
	Holder    string `json:"holder"`             // shown to others who try the same Service
	URLAddr   string `json:"url_addr,omitempty"` // isolated: the local URL's listen address; "" = 127.0.0.1:0
	// Grace is how long the gateway keeps the workload patched after this
	// workstation stopped renewing (asleep, offline) before restoring it;
	// 0 = the default (15 min). Traffic passes through to the original
	// container within 2 s regardless.
	Grace time.Duration `json:"grace,omitempty"`
	// Force replaces another developer's conflicting intercept; the
	// gateway allows it only to a user who may update the workload.
	Force bool `json:"force,omitempty"`
}

// Intercept states, as status shows them.
const (
	InterceptActive       = "active"       // routed here, lease renewed
	InterceptReconnecting = "reconnecting" // renewals failing since StateSince; the patch is held for Grace
	InterceptLost         = "lost"         // given up (StateReason says why and what was restored)
)

// InterceptInfo describes a live intercept.
type InterceptInfo struct {
	ID            string        `json:"id"`
	Service       string        `json:"service"`
	Namespace     string        `json:"namespace"`
	Workload      string        `json:"workload"` // Kind/name
	Container     string        `json:"container"`
	ContainerPort int           `json:"container_port"`
	ServicePort   int           `json:"service_port"`
	LocalPort     int           `json:"local_port"`
	RouteAs       string        `json:"route_as,omitempty"`
	Holder        string        `json:"holder"`
	Target        string        `json:"target"`              // the tunnel address the gateway dials
	LocalURL      string        `json:"local_url,omitempty"` // isolated: adds the header and goes to the Service
	Since         time.Time     `json:"since"`
	Grace         time.Duration `json:"grace"`                  // how long the patch outlives a silent workstation
	State         string        `json:"state"`                  // InterceptActive, InterceptReconnecting, InterceptLost
	StateSince    time.Time     `json:"state_since"`            // when State began
	StateReason   string        `json:"state_reason,omitempty"` // reconnecting, lost: the one-line why
	// Sidecars are the pods whose sidecar polls the gateway's relay for
	// this Service (as of the last renewal), when SidecarsKnown: they run
	// and reach the gateway.
	Sidecars      []string `json:"sidecars,omitempty"`
	SidecarsKnown bool     `json:"sidecars_known,omitempty"`
}

type interceptState struct {
	info  InterceptInfo // State, StateSince, StateReason and Target change under interceptor.mu
	req   api.InterceptRequest
	ref   cluster.WorkloadRef
	spec  InterceptSpec // what was asked: a re-patch resolves the target again from it
	grace time.Duration // the gateway's hold for this intercept
	// lastOK is the wall-clock time (no monotonic reading: it stands still
	// during suspend) of the last renewal the gateway accepted; guarded by
	// interceptor.mu.
	lastOK    time.Time
	closers   []func() error
	closeOnce sync.Once
	// quiesce waits, up to a bound, for the relayed connections in flight
	// to end (nil: nothing to wait for).
	quiesce func(max time.Duration)
}

// close releases the listeners once; a second call waits for the first.
func (st *interceptState) close() {
	st.closeOnce.Do(func() {
		for i := len(st.closers) - 1; i >= 0; i-- {
			_ = st.closers[i]()
		}
		st.closers = nil
	})
}

// rolloutTimeout bounds waiting for patched (or restored) pods.
const rolloutTimeout = 2 * time.Minute

// leaveSettle is how long a leave waits for relayed connections still in
// flight after the gateway stopped admitting new ones: a few round trips.
const leaveSettle = 200 * time.Millisecond

// interceptControl is the part of the gateway's control API intercepts use.
type interceptControl interface {
	// AddIntercept registers an intercept (or renews an identical one).
	AddIntercept(ctx context.Context, req api.InterceptRequest) (api.Intercept, error)
	// RenewIntercepts extends leases and names the ids the gateway forgot.
	RenewIntercepts(ctx context.Context, req api.RenewRequest) (api.RenewResponse, error)
	// LeaveIntercept drops one and says how many remain on its workload.
	LeaveIntercept(ctx context.Context, req api.LeaveRequest) (api.LeaveResponse, error)
	// ListIntercepts lists the live intercepts of a namespace.
	ListIntercepts(ctx context.Context, namespace string) ([]api.Intercept, error)
	// RestoreWorkload has the gateway put a workload it patched back,
	// unless an intercept there still holds it (409).
	RestoreWorkload(ctx context.Context, req api.RestoreRequest) (api.RestoreResponse, error)
}

// interceptConfig is what intercepts need.
type interceptConfig struct {
	// Client resolves Services and reads workloads with the user's own
	// rights; the gateway patches and restores them (after checking the
	// user may update them), so the sidecar is the gateway's.
	Client           kubernetes.Interface
	Namespace        string // where Services are taken from
	GatewayNamespace string // intercepts need it to equal Namespace
	PublicKey        string // this workstation's WireGuard key, its identity at the gateway
	Control          interceptControl
	// Listen accepts the gateway's connections for a local port on the
	// tunnel address; a nil listener with a nil error means the local
	// server, bound to every address, takes them itself.
	Listen func(port int) (net.Listener, error)
	// Inbound opens the tunnel's inbound filter for an intercept's port
	// while the intercept lasts; nil = no filter to open.
	Inbound inboundPorts
	// Dial reaches a Service for the isolated local URL; nil = net.Dialer.
	Dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	CheckLocal     func(port int) error             // nil = something must listen on 127.0.0.1:port
	Progress       func(format string, args ...any) // nil = log only
	Log            *slog.Logger                     // nil discards
	Connections    prometheus.Counter               // inbound connections delivered; nil = not counted
	RenewEvery     time.Duration                    // 0 = 5 s
	RolloutTimeout time.Duration                    // 0 = 2 min
	// Reregister registers this workstation with the gateway again when a
	// renewal says it forgot the key; nil = never.
	Reregister func(ctx context.Context) error
	// Now is the wall clock; nil = time.Now. Readings are taken without
	// their monotonic part, which stands still while the machine sleeps.
	Now func() time.Time
}

// interceptor holds this session's intercepts: it patches workloads, accepts
// their traffic from the tunnel, renews their leases, re-attaches them after
// a sleep or a gateway restart (intercept_reattach.go), and restores the
// workloads when they end — at the latest when Run returns.
type interceptor struct {
	cfg       interceptConfig
	op        sync.Mutex // serialises intercept, leave and re-attach (slow: rollouts)
	mu        sync.Mutex // guards byService, the states' changing fields and pending (the renewal needs it briefly)
	byService map[string]*interceptState
	// pending are intercepts for the re-attach worker (true: add to the
	// gateway again first); kick wakes it.
	pending map[*interceptState]bool
	kick    chan struct{}
	// Used by the renewal loop only.
	lastAttempt  time.Time // wall clock of the previous renewal attempt
	renewFailing bool      // the previous renewal failed (log a streak once)
}

func newInterceptor(cfg interceptConfig) *interceptor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Progress == nil {
		log := cfg.Log
		cfg.Progress = func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }
	}
	if cfg.CheckLocal == nil {
		cfg.CheckLocal = checkLocalPort
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	if cfg.Connections == nil {
		cfg.Connections = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
	}
	if cfg.RenewEvery == 0 {
		cfg.RenewEvery = 5 * time.Second
	}
	if cfg.RolloutTimeout == 0 {
		cfg.RolloutTimeout = rolloutTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &interceptor{cfg: cfg, byService: map[string]*interceptState{},
		pending: map[*interceptState]bool{}, kick: make(chan struct{}, 1)}
}

// Intercept routes a Service's inbound traffic (all of it, or the requests
// carrying RouteAs) to 127.0.0.1:LocalPort on this workstation. On any
// failure nothing stays patched or registered. It tells report (nil = no
// one) its steps as they happen, from the calling goroutine, besides the
// session's own progress.
func (ic *interceptor) Intercept(ctx context.Context, spec InterceptSpec, report func(InterceptEvent)) (_ InterceptInfo, err error) {
	if report == nil {
		report = func(InterceptEvent) {}
	}
	if spec.Service == "" {
		return InterceptInfo{}, errors.New("intercept: name a Service")
	}
	if spec.LocalPort < 1 || spec.LocalPort > 65535 {
		return InterceptInfo{}, fmt.Errorf("intercept: local port %d: want 1-65535", spec.LocalPort)
	}
	ns := ic.cfg.Namespace
	if ns != ic.cfg.GatewayNamespace {
		return InterceptInfo{}, fmt.Errorf("intercept: the gateway runs in %q but services are taken from %q: intercepts need the gateway in the Service's namespace (`bridgetun up -n %s`)", ic.cfg.GatewayNamespace, ns, ns)
	}
	ic.op.Lock()
	defer ic.op.Unlock()
	if spec.Grace < 0 {
		return InterceptInfo{}, fmt.Errorf("intercept: grace %s: want 0 (the default, %s) or more", spec.Grace, api.DefaultGrace)
	}
	ic.mu.Lock()
	have, ok := ic.byService[spec.Service]
	if ok && have.info.State == InterceptLost {
		// A new intercept replaces a lost one (already released).
		delete(ic.byService, spec.Service)
		ok = false
	}
	ic.mu.Unlock()
	if ok {
		return InterceptInfo{}, fmt.Errorf("intercept: %s is already intercepted by this session (to local port %d): run `bridgetun leave %s` first", spec.Service, have.info.LocalPort, spec.Service)
	}
	if err := ic.cfg.CheckLocal(spec.LocalPort); err != nil {
		return InterceptInfo{}, err
	}
	if err := cluster.CheckAccess(ctx, ic.cfg.Client, ns, cluster.InterceptAccessChecks()); err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept %s: %w", spec.Service, err)
	}
	t, err := cluster.ResolveInterceptTarget(ctx, ic.cfg.Client, ns, spec.Service, spec.Port)
	if err != nil {
		return InterceptInfo{}, err
	}
	st := &interceptState{
		ref: cluster.WorkloadRef{Namespace: ns, Kind: t.Kind, Name: t.Name},
		req: api.InterceptRequest{
			PublicKey: ic.cfg.PublicKey, Namespace: ns, Service: spec.Service, ServicePort: spec.Port,
			Workload: api.Workload{Namespace: ns, Kind: t.Kind, Name: t.Name},
			Port:     spec.LocalPort, RouteAs: spec.RouteAs, Label: spec.Holder, Force: spec.Force,
			GraceSeconds: graceSeconds(spec.Grace),
		},
		spec: spec,
	}
	var registered, changed bool
	defer func() {
		if err == nil {
			return
		}
		st.close()
		if registered {
			ic.unregister(st)
		}
		if changed {
			ic.restoreWorkload(st.ref)
		}
	}()
	if err := ic.listenInbound(st, spec.LocalPort); err != nil {
		return InterceptInfo{}, err
	}
	// The gateway checks our right to update the workload, then patches
	// it with its own ServiceAccount.
	it, err := ic.cfg.Control.AddIntercept(ctx, st.req)
	if err != nil {
		switch {
		case isConflict(err):
			return InterceptInfo{}, fmt.Errorf("intercept refused: %w (or take it over with --force, if you may update the workload)", err)
		case isForbidden(err):
			return InterceptInfo{}, fmt.Errorf("intercept refused by the gateway: %w", err)
		case isWorkloadError(err):
			return InterceptInfo{}, fmt.Errorf("intercept %s: %w", spec.Service, err)
		}
		return InterceptInfo{}, fmt.Errorf("intercept %s: register with the gateway: %w", spec.Service, err)
	}
	registered, changed = true, it.Patched
	st.lastOK = ic.now()
	if it.Workload != st.req.Workload {
		return InterceptInfo{}, fmt.Errorf("intercept %s: the gateway found it served by %s/%s, this machine by %s/%s: try again", spec.Service, it.Workload.Kind, it.Workload.Name, t.Kind, t.Name)
	}
	st.grace = grantedGrace(it, spec.Grace)
	if changed {
		ic.cfg.Progress("patched %s: waiting for its pods to run the sidecar", st.ref)
		report(InterceptEvent{Done: true, Text: "patched " + shortRef(st.ref)})
	} else {
		report(InterceptEvent{Done: true, Text: shortRef(st.ref) + " already runs the sidecar"})
	}
	wctx, cancel := context.WithTimeout(ctx, ic.cfg.RolloutTimeout)
	err = cluster.WaitRolloutReport(wctx, ic.cfg.Client, st.ref, func(state string) { report(InterceptEvent{Text: state}) })
	cancel()
	if err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept %s: %w (nothing left patched)", spec.Service, err)
	}
	report(InterceptEvent{Done: true, Text: "every pod of " + shortRef(st.ref) + " runs the sidecar"})
	st.info = InterceptInfo{
		ID: it.ID, Service: spec.Service, Namespace: ns, Workload: t.Kind + "/" + t.Name,
		Container: t.Container, ContainerPort: int(t.ContainerPort), ServicePort: int(t.ServicePort.Port),
		LocalPort: spec.LocalPort, RouteAs: spec.RouteAs, Holder: spec.Holder, Target: it.Target, Since: time.Now(),
		Grace: st.grace, State: InterceptActive, StateSince: ic.now(),
	}
	if spec.RouteAs != "" {
		if st.info.LocalURL, err = ic.serveLocalURL(ctx, st, spec, t); err != nil {
			return InterceptInfo{}, err
		}
	}
	// The lease was not renewed during the rollout: refresh it now (a
	// route dropped meanwhile comes back); a failure is the renewal's to
	// handle from here on.
	refreshed, rerr := ic.cfg.Control.AddIntercept(ctx, st.req)
	ic.mu.Lock()
	if rerr == nil {
		st.info.Target, st.lastOK = refreshed.Target, ic.now()
	}
	ic.byService[spec.Service] = st
	ic.mu.Unlock()
	ic.cfg.Progress("intercepting %s (%s): %s → 127.0.0.1:%d", spec.Service, routeDesc(spec.RouteAs), st.ref, spec.LocalPort)
	return st.info, nil
}

func routeDesc(routeAs string) string {
	if routeAs == "" {
		return "all traffic"
	}
	return "requests with " + api.RouteAsHeader + ": " + routeAs
}

// Infos lists this session's intercepts for status, each in its real
// state (active, reconnecting, lost), sorted by Service.
func (ic *interceptor) Infos() []InterceptInfo {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	var out []InterceptInfo
	for _, st := range ic.byService {
		out = append(out, st.info)
	}
	slices.SortFunc(out, func(a, b InterceptInfo) int { return strings.Compare(a.Service, b.Service) })
	return out
}
