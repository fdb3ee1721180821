package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/splice"
)

// InterceptSpec is what `bridgetun intercept` asks of the session.
type InterceptSpec struct {
	Service   string `json:"service"`
	Port      string `json:"port,omitempty"` // REMOTE: the Service port's name or number; "" = its only port
	LocalPort int    `json:"local_port"`
	RouteAs   string `json:"route_as,omitempty"` // "" = every request (a full intercept)
	Holder    string `json:"holder"`             // shown to others who try the same Service
	URLAddr   string `json:"url_addr,omitempty"` // isolated: the local URL's listen address; "" = 127.0.0.1:0
}

// InterceptInfo describes a live intercept.
type InterceptInfo struct {
	ID            string    `json:"id"`
	Service       string    `json:"service"`
	Namespace     string    `json:"namespace"`
	Workload      string    `json:"workload"` // Kind/name
	Container     string    `json:"container"`
	ContainerPort int       `json:"container_port"`
	ServicePort   int       `json:"service_port"`
	LocalPort     int       `json:"local_port"`
	RouteAs       string    `json:"route_as,omitempty"`
	Holder        string    `json:"holder"`
	Target        string    `json:"target"`              // the tunnel address the gateway dials
	LocalURL      string    `json:"local_url,omitempty"` // isolated: adds the header and goes to the Service
	Since         time.Time `json:"since"`
}

type interceptState struct {
	info    InterceptInfo
	req     api.InterceptRequest
	ref     cluster.WorkloadRef
	closers []func() error
	// quiesce waits, up to a bound, for the relayed connections in flight
	// to end (nil: nothing to wait for).
	quiesce func(max time.Duration)
}

func (st *interceptState) close() {
	for i := len(st.closers) - 1; i >= 0; i-- {
		_ = st.closers[i]()
	}
	st.closers = nil
}

// rolloutTimeout bounds waiting for patched (or restored) pods.
const rolloutTimeout = 2 * time.Minute

// leaveSettle is how long a leave waits for relayed connections still in
// flight after the gateway stopped admitting new ones: a few round trips.
const leaveSettle = 200 * time.Millisecond

// Intercept routes a Service's inbound traffic (all of it, or the requests
// carrying RouteAs) to 127.0.0.1:LocalPort on this workstation. On any
// failure nothing stays patched or registered.
func (s *Session) Intercept(ctx context.Context, spec InterceptSpec) (_ InterceptInfo, err error) {
	if spec.Service == "" {
		return InterceptInfo{}, errors.New("intercept: name a Service")
	}
	if spec.LocalPort < 1 || spec.LocalPort > 65535 {
		return InterceptInfo{}, fmt.Errorf("intercept: local port %d: want 1-65535", spec.LocalPort)
	}
	ns := s.conn.Namespace
	if ns != s.gwNS {
		return InterceptInfo{}, fmt.Errorf("intercept: the gateway runs in %q but services are taken from %q: intercepts need the gateway in the Service's namespace (`bridgetun up -n %s`)", s.gwNS, ns, ns)
	}
	s.icOp.Lock()
	defer s.icOp.Unlock()
	s.icMu.Lock()
	have, ok := s.intercepts[spec.Service]
	s.icMu.Unlock()
	if ok {
		return InterceptInfo{}, fmt.Errorf("intercept: %s is already intercepted by this session (to local port %d): run `bridgetun leave %s` first", spec.Service, have.info.LocalPort, spec.Service)
	}
	if err := checkLocalPort(spec.LocalPort); err != nil {
		return InterceptInfo{}, err
	}
	if err := cluster.CheckAccess(ctx, s.conn.Client, ns, cluster.InterceptAccessChecks()); err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept %s: %w", spec.Service, err)
	}
	t, err := cluster.ResolveInterceptTarget(ctx, s.conn.Client, ns, spec.Service, spec.Port)
	if err != nil {
		return InterceptInfo{}, err
	}
	st := &interceptState{
		ref: cluster.WorkloadRef{Namespace: ns, Kind: t.Kind, Name: t.Name},
		req: api.InterceptRequest{
			PublicKey: s.key.PublicKey().String(), Namespace: ns, Service: spec.Service,
			Workload: api.Workload{Namespace: ns, Kind: t.Kind, Name: t.Name},
			Port:     spec.LocalPort, RouteAs: spec.RouteAs, Holder: spec.Holder,
		},
	}
	var registered, changed bool
	defer func() {
		if err == nil {
			return
		}
		st.close()
		if registered {
			s.unregister(st)
		}
		if changed {
			s.restoreWorkload(st.ref)
		}
	}()
	if err := s.listenInbound(st, spec.LocalPort); err != nil {
		return InterceptInfo{}, err
	}
	var it api.Intercept
	if err := s.control(ctx, http.MethodPost, "/v1/intercepts", st.req, &it); err != nil {
		if isConflict(err) {
			return InterceptInfo{}, fmt.Errorf("intercept refused: %w", err)
		}
		return InterceptInfo{}, fmt.Errorf("intercept %s: register with the gateway: %w", spec.Service, err)
	}
	registered = true
	relay, err := s.relayAddr(ctx)
	if err != nil {
		return InterceptInfo{}, err
	}
	changed, err = cluster.PatchWorkload(ctx, s.conn.Client, t, cluster.SidecarSpec{
		Image: s.gwImage, PullPolicy: s.gwPullPolicy, Relay: relay,
		TokenSecret: cluster.GatewayName, TokenKey: cluster.SecretKeyToken,
	})
	if err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept %s: %w", spec.Service, err)
	}
	if changed {
		s.progress("patched %s: waiting for its pods to run the sidecar", st.ref)
	}
	wctx, cancel := context.WithTimeout(ctx, rolloutTimeout)
	err = cluster.WaitRollout(wctx, s.conn.Client, st.ref)
	cancel()
	if err != nil {
		return InterceptInfo{}, fmt.Errorf("intercept %s: %w (nothing left patched)", spec.Service, err)
	}
	st.info = InterceptInfo{
		ID: it.ID, Service: spec.Service, Namespace: ns, Workload: t.Kind + "/" + t.Name,
		Container: t.Container, ContainerPort: int(t.ContainerPort), ServicePort: int(t.ServicePort.Port),
		LocalPort: spec.LocalPort, RouteAs: spec.RouteAs, Holder: spec.Holder, Target: it.Target, Since: time.Now(),
	}
	if spec.RouteAs != "" {
		if st.info.LocalURL, err = s.serveLocalURL(ctx, st, spec, t); err != nil {
			return InterceptInfo{}, err
		}
	}
	s.icMu.Lock()
	s.intercepts[spec.Service] = st
	s.icMu.Unlock()
	s.progress("intercepting %s (%s): %s → 127.0.0.1:%d", spec.Service, routeDesc(spec.RouteAs), st.ref, spec.LocalPort)
	return st.info, nil
}

func routeDesc(routeAs string) string {
	if routeAs == "" {
		return "all traffic"
	}
	return "requests with " + api.RouteAsHeader + ": " + routeAs
}

// checkLocalPort refuses an intercept whose local server is not listening.
func checkLocalPort(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 2*time.Second)
	if err != nil {
		return fmt.Errorf("intercept: nothing listens on 127.0.0.1:%d: start your local server first (or pass the port it listens on with --port)", port)
	}
	c.Close()
	return nil
}

// listenInbound accepts the gateway's connections on the tunnel address and
// hands each to 127.0.0.1:port. In TUN mode a local server bound to every
// address already receives them directly: then there is nothing to do.
func (s *Session) listenInbound(st *interceptState, port int) error {
	var ln net.Listener
	var err error
	if s.mode == client.ModeNetstack {
		ln, err = s.client.Netstack().ListenTCP(uint16(port))
	} else {
		p, perr := netip.ParsePrefix(s.reg.Address)
		if perr != nil {
			return fmt.Errorf("intercept: tunnel address %q: %w", s.reg.Address, perr)
		}
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.Addr(), uint16(port)).String())
		if errors.Is(err, syscall.EADDRINUSE) {
			s.log.Info("local server listens on every address: it takes intercepted connections itself", "port", port)
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("intercept: listen on the tunnel address, port %d: %w", port, err)
	}
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		active     = map[net.Conn]bool{}
		lastAccept time.Time
	)
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			active[c] = true
			lastAccept = time.Now()
		} else {
			delete(active, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			track(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer track(c, false)
				defer c.Close()
				up, err := net.DialTimeout("tcp", local, 2*time.Second)
				if err != nil {
					s.log.Warn("intercepted connection: local server does not answer", "local", local, "err", err)
					return
				}
				defer up.Close()
				s.icConns.Inc()
				splice.Relay(c, up)
			}()
		}
	}()
	st.quiesce = func(max time.Duration) {
		// Relays the gateway admitted just before the unregister may still
		// be on their way here: done means no connection open and none
		// accepted for leaveSettle, and at least leaveSettle since the
		// start. Cutting one of them would fail its request.
		start := time.Now()
		for now := start; now.Sub(start) < max; now = time.Now() {
			mu.Lock()
			n, last := len(active), lastAccept
			mu.Unlock()
			if n == 0 && now.Sub(start) >= leaveSettle && now.Sub(last) >= leaveSettle {
				return
			}
			time.Sleep(20 * time.Millisecond) // polling the relay count, bounded by max
		}
	}
	// Leaving cuts the connections still open (a sidecar's idle keep-alive
	// connection would otherwise hold the leave for minutes).
	st.closers = append(st.closers, func() error {
		err := ln.Close()
		mu.Lock()
		for c := range active {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
		return err
	})
	return nil
}

// relayAddr is where sidecars reach the gateway: the relay Service's
// ClusterIP, stable across gateway restarts.
func (s *Session) relayAddr(ctx context.Context) (string, error) {
	svc, err := s.conn.Client.CoreV1().Services(s.gwNS).Get(ctx, cluster.RelayName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("intercept: relay service %s/%s: %w (reinstall the gateway: `bridgetun up --upgrade`)", s.gwNS, cluster.RelayName, err)
	}
	return net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(cluster.RelayPort)), nil
}

// serveLocalURL opens a loopback listener that adds the route-as header and
// forwards to the Service through the tunnel, so a browser on this machine
// reaches the isolated version.
func (s *Session) serveLocalURL(ctx context.Context, st *interceptState, spec InterceptSpec, t cluster.InterceptTarget) (string, error) {
	svc, err := s.conn.Client.CoreV1().Services(t.Namespace).Get(ctx, t.Service, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("intercept: service %s/%s: %w", t.Namespace, t.Service, err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return "", nil // headless: no single address to send the browser to
	}
	addr := spec.URLAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("intercept: local URL listener %s: %w", addr, err)
	}
	upstream := &url.URL{Scheme: "http", Host: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(t.ServicePort.Port)))}
	dial := (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	if s.mode == client.ModeNetstack {
		dial = s.client.Netstack().DialContext
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = t.Service + "." + t.Namespace
			r.Out.Header.Set(api.RouteAsHeader, spec.RouteAs)
		},
		Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	st.closers = append(st.closers, srv.Close)
	return "http://" + ln.Addr().String() + "/", nil
}

// Leave ends the intercept of service: the gateway forgets it and, when no
// one else intercepts the workload, its original pod template comes back.
func (s *Session) Leave(service string) (string, error) {
	s.icOp.Lock()
	defer s.icOp.Unlock()
	s.icMu.Lock()
	_, ok := s.intercepts[service]
	s.icMu.Unlock()
	if !ok {
		return "", fmt.Errorf("leave: %s is not intercepted by this session (see `bridgetun status`)", service)
	}
	return s.leaveLocked(service), nil
}

func (s *Session) leaveLocked(service string) string {
	s.icMu.Lock()
	st, ok := s.intercepts[service]
	delete(s.intercepts, service)
	s.icMu.Unlock()
	if !ok {
		return ""
	}
	// Routes first: the sidecars send new connections to the original at
	// once; the ones in flight here get a moment to finish before the
	// listener and whatever is left (idle keep-alives) are cut.
	lr, err := s.unregister(st)
	if st.quiesce != nil {
		st.quiesce(time.Second)
	}
	st.close()
	switch {
	case err != nil:
		// Unknown whether others hold it: the gateway restores the
		// workload itself once no lease remains.
		s.progress("left %s; the gateway did not answer (%v): it restores %s when no intercept remains", st.req.Service, err, st.ref)
		return "gateway unreachable: it restores the workload when no intercept remains"
	case lr.Remaining > 0:
		s.progress("left %s; %d other intercept(s) keep %s patched", st.req.Service, lr.Remaining, st.ref)
		return fmt.Sprintf("%d other intercept(s) keep %s patched", lr.Remaining, st.ref)
	}
	s.restoreWorkload(st.ref)
	s.progress("left %s: %s restored", st.req.Service, st.ref)
	return st.ref.String() + " runs its original pod template again"
}

// unregister tells the gateway the intercept is over.
func (s *Session) unregister(st *interceptState) (api.LeaveResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var lr api.LeaveResponse
	err := s.control(ctx, http.MethodDelete, "/v1/intercepts", api.LeaveRequest{PublicKey: st.req.PublicKey, Namespace: st.req.Namespace, Service: st.req.Service}, &lr)
	if err != nil {
		s.log.Warn("leave: gateway", "service", st.req.Service, "err", err)
	}
	return lr, err
}

func (s *Session) restoreWorkload(ref cluster.WorkloadRef) {
	ctx, cancel := context.WithTimeout(context.Background(), rolloutTimeout)
	defer cancel()
	if _, err := cluster.RestoreWorkload(ctx, s.conn.Client, ref); err != nil {
		s.log.Warn("restore workload", "workload", ref.String(), "err", err)
		return
	}
	if err := cluster.WaitRollout(ctx, s.conn.Client, ref); err != nil {
		s.log.Warn("restored workload rollout", "workload", ref.String(), "err", err)
	}
}

// leaveAll ends every intercept (down, Ctrl-C).
func (s *Session) leaveAll() {
	s.icOp.Lock()
	defer s.icOp.Unlock()
	s.icMu.Lock()
	var names []string
	for name := range s.intercepts {
		names = append(names, name)
	}
	s.icMu.Unlock()
	for _, name := range names {
		s.leaveLocked(name)
	}
}

// renewIntercepts keeps the leases alive; intercepts the gateway no longer
// knows (it restarted) are added again.
func (s *Session) renewIntercepts(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.icMu.Lock()
		byID := map[string]*interceptState{}
		for _, st := range s.intercepts {
			byID[st.info.ID] = st
		}
		s.icMu.Unlock()
		if len(byID) == 0 {
			continue
		}
		ids := make([]string, 0, len(byID))
		for id := range byID {
			ids = append(ids, id)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var rr api.RenewResponse
		err := s.control(rctx, http.MethodPost, "/v1/intercepts/renew", api.RenewRequest{PublicKey: s.key.PublicKey().String(), IDs: ids}, &rr)
		if err != nil {
			cancel()
			s.log.Warn("renew intercept leases", "err", err)
			continue
		}
		for _, id := range rr.Unknown {
			st := byID[id]
			if err := s.control(rctx, http.MethodPost, "/v1/intercepts", st.req, nil); err != nil {
				s.log.Warn("re-add intercept after a gateway restart", "service", st.req.Service, "err", err)
			} else {
				s.log.Info("intercept re-added (the gateway had forgotten it)", "service", st.req.Service)
			}
		}
		cancel()
	}
}

// interceptInfos lists the live intercepts for Status.
func (s *Session) interceptInfos() []InterceptInfo {
	s.icMu.Lock()
	defer s.icMu.Unlock()
	var out []InterceptInfo
	for _, st := range s.intercepts {
		out = append(out, st.info)
	}
	return out
}

// repairIntercepts restores workloads a crashed session left patched:
// patched, in our namespace, and held by no live intercept at the gateway.
func (s *Session) repairIntercepts(ctx context.Context) {
	refs, err := cluster.PatchedWorkloads(ctx, s.conn.Client, s.gwNS)
	if err != nil || len(refs) == 0 {
		return
	}
	var live []api.Intercept
	if err := s.control(ctx, http.MethodGet, "/v1/intercepts?namespace="+url.QueryEscape(s.gwNS), nil, &live); err != nil {
		s.log.Warn("repair: list live intercepts", "err", err)
		return
	}
	held := map[api.Workload]bool{}
	for _, it := range live {
		held[it.Workload] = true
	}
	for _, ref := range refs {
		if held[api.Workload{Namespace: ref.Namespace, Kind: ref.Kind, Name: ref.Name}] {
			continue
		}
		if _, err := cluster.RestoreWorkload(ctx, s.conn.Client, ref); err != nil {
			s.log.Warn("repair: restore", "workload", ref.String(), "err", err)
			continue
		}
		s.progress("repaired a previous session's leftovers: restored %s", ref)
	}
}
