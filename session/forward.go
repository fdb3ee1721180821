package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
)

// Forward is one local listener relaying into the cluster.
type Forward struct {
	Service  string `json:"service,omitempty"`  // "" for an address forward
	Port     int32  `json:"port,omitempty"`     // the Service port
	Protocol string `json:"protocol,omitempty"` // "tcp" or "udp"; "" = tcp
	Local    string `json:"local"`
	Remote   string `json:"remote"`
}

func (f Forward) network() string {
	if f.Protocol == "" {
		return "tcp"
	}
	return f.Protocol
}

// String is how logs and progress lines show f: "127.0.0.3:80 to 10.96.1.2:80 frontend".
func (f Forward) String() string {
	s := f.Local + " to " + f.Remote
	if f.Service != "" {
		s += " " + f.Service
	}
	if f.network() != "tcp" {
		s += " (" + f.network() + ")"
	}
	return s
}

// listenFunc opens one forward: network is "tcp" or "udp", local and remote
// are host:port. The closer stops it and returns once its socket is closed.
type listenFunc func(ctx context.Context, network, local, remote string) (net.Addr, io.Closer, error)

// clientListen opens forwards through the netstack client.
func clientListen(c *client.Client, log *slog.Logger) listenFunc {
	return func(ctx context.Context, network, local, remote string) (net.Addr, io.Closer, error) {
		l, err := c.ListenForward(ctx, network, local, remote, log)
		if err != nil {
			return nil, nil, err
		}
		return l.Addr(), l, nil
	}
}

// Forward-all settings.
const (
	// lowPortOffset moves Service ports below 1024, which only root may
	// bind, to 10000+port under --forward-all.
	lowPortOffset = 10000
)

// forwardAllSyncTimeout bounds the wait for the first list of Services (a
// variable for tests).
var forwardAllSyncTimeout = 30 * time.Second

// firstForwardAddr is where Service forwards start; each Service gets the
// next loopback address, so ports never clash.
var firstForwardAddr = netip.MustParseAddr("127.0.0.2")

// forwardSet is the session's forwards: the --forward ones, opened at start,
// and with --forward-all one per TCP or UDP port of every Service of the
// namespace, kept current by a watch. Status reads it while the watch
// changes it.
type forwardSet struct {
	listen listenFunc
	log    *slog.Logger
	note   func(format string, args ...any) // a progress line, logged at Info

	stopWatch context.CancelFunc // nil without --forward-all
	watchDone chan struct{}

	mu          sync.Mutex
	explicit    []openForward            // --forward, in order
	explicitSvc map[string]bool          // Services named by --forward: --forward-all leaves them be
	bySvc       map[string][]openForward // --forward-all, in Service port order
	addrs       map[string]netip.Addr    // Service → its loopback address, kept for the session
	next        netip.Addr
	lowNoted    bool
}

type openForward struct {
	Forward
	closer io.Closer
}

// startForwards opens the --forward listeners and, with --forward-all,
// starts the watch that forwards every Service and waits for its first
// round. A spec is [udp:]LOCAL=REMOTE (addresses; TCP unless udp:), or
// SVC[:PORT][=LOCALPORT] (a Service's TCP and UDP ports): each Service gets
// its own loopback address (127.0.0.2, .3, ...), and its Kubernetes-style
// variables point there (see RunEnv). On error nothing stays open.
func (s *Session) startForwards(ctx context.Context, listen listenFunc) (err error) {
	if (len(s.cfg.Forwards) > 0 || s.cfg.ForwardAll) && s.mode != client.ModeNetstack {
		return errors.New("--forward and --forward-all need --netstack (in TUN mode, programs reach cluster addresses directly)")
	}
	fs := &s.forwards
	fs.listen, fs.log, fs.note = listen, s.log, s.progress
	fs.mu.Lock()
	fs.explicitSvc, fs.bySvc, fs.addrs, fs.next = map[string]bool{}, map[string][]openForward{}, map[string]netip.Addr{}, firstForwardAddr
	fs.mu.Unlock()
	defer func() {
		if err != nil {
			fs.stop()
		}
	}()
	for _, spec := range s.cfg.Forwards {
		if err := s.openSpec(ctx, spec); err != nil {
			return err
		}
	}
	if !s.cfg.ForwardAll {
		return nil
	}
	ns := s.conn.Namespace
	return fs.watch(ctx, ns, func(ctx context.Context, apply cluster.ServiceChangeFunc) {
		cluster.WatchServices(ctx, s.conn.Client, ns, apply, s.log)
	})
}

// openSpec opens the listeners of one --forward spec.
func (s *Session) openSpec(ctx context.Context, spec string) error {
	fs := &s.forwards
	network, addrSpec := "tcp", spec
	for _, n := range []string{"tcp", "udp"} {
		if rest, ok := strings.CutPrefix(spec, n+":"); ok {
			network, addrSpec = n, rest
		}
	}
	if local, remote, err := client.ParseForward(addrSpec); err == nil && isAddr(local) {
		f := Forward{Protocol: network, Local: local, Remote: remote}
		if err := fs.openExplicit(ctx, f); err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("--forward %s: %s (%s) is already in use: pick another local port", spec, local, network)
			}
			return fmt.Errorf("--forward %s: %w", spec, err)
		}
		return nil
	}
	name, port, localPort, err := parseServiceForward(spec)
	if err != nil {
		return err
	}
	svc, err := s.conn.Client.CoreV1().Services(s.conn.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("--forward %s: service %q in %q: %w", spec, name, s.conn.Namespace, err)
	}
	if !hasClusterIP(svc) {
		return fmt.Errorf("--forward %s: service %q has no ClusterIP (headless): forward a pod address instead", spec, name)
	}
	fs.mu.Lock()
	fs.explicitSvc[name] = true
	ip := fs.addrFor(name)
	fs.mu.Unlock()
	matched := false
	for _, p := range svc.Spec.Ports {
		proto := protocolOf(p)
		if proto == "" || (port != "" && port != p.Name && port != strconv.Itoa(int(p.Port))) {
			continue
		}
		matched = true
		lp := int(p.Port)
		if localPort != 0 {
			lp = localPort
		}
		f := Forward{
			Service: name, Port: p.Port, Protocol: proto,
			Local:  net.JoinHostPort(ip.String(), strconv.Itoa(lp)),
			Remote: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port))),
		}
		err := fs.openExplicit(ctx, f)
		switch {
		case errors.Is(err, syscall.EACCES):
			return fmt.Errorf("--forward %s: %w: ports below 1024 need root; add =LOCALPORT, e.g. %s:%d=%d", spec, err, name, p.Port, otherPort(lp))
		case errors.Is(err, syscall.EADDRINUSE):
			return fmt.Errorf("--forward %s: %s (%s) is already in use: pick another LOCALPORT, e.g. %s:%d=%d", spec, f.Local, proto, name, p.Port, otherPort(lp))
		case err != nil:
			return fmt.Errorf("--forward %s: %w", spec, err)
		}
	}
	if !matched {
		if port == "" {
			return fmt.Errorf("--forward %s: service %q has no TCP or UDP ports", spec, name)
		}
		return fmt.Errorf("--forward %s: service %q has no TCP or UDP port %q", spec, name, port)
	}
	return nil
}

// watch starts the --forward-all watch of ns (run, until its ctx ends) and
// waits for its first round.
func (fs *forwardSet) watch(ctx context.Context, ns string, run func(context.Context, cluster.ServiceChangeFunc)) error {
	wctx, cancel := context.WithCancel(ctx)
	fs.stopWatch, fs.watchDone = cancel, make(chan struct{})
	synced := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(fs.watchDone)
		run(wctx, func(changed []*corev1.Service, deleted []string) {
			fs.apply(wctx, changed, deleted)
			once.Do(func() { close(synced) })
		})
	}()
	select {
	case <-synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(forwardAllSyncTimeout):
		return fmt.Errorf("--forward-all: no list of the Services in %q within %s: check that you may list them (kubectl get services -n %s)", ns, forwardAllSyncTimeout, ns)
	}
}

// apply brings the --forward-all listeners in line with a batch from the watch.
func (fs *forwardSet) apply(ctx context.Context, changed []*corev1.Service, deleted []string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, name := range deleted {
		fs.syncService(ctx, name, nil)
	}
	for _, svc := range changed {
		fs.syncService(ctx, svc.Name, svc)
	}
}

// syncService opens and closes name's listeners so that they match svc
// (nil: deleted). Listeners that stay the same are left alone. A port that
// cannot be bound is logged and skipped; the next change retries it.
// Called with mu held.
func (fs *forwardSet) syncService(ctx context.Context, name string, svc *corev1.Service) {
	if fs.explicitSvc[name] {
		return
	}
	var want []Forward
	switch {
	case svc == nil:
	case !hasClusterIP(svc):
		fs.log.Debug("--forward-all: service skipped: no ClusterIP (headless or ExternalName)", "service", name)
	default:
		var ip netip.Addr
		for _, p := range svc.Spec.Ports {
			proto := protocolOf(p)
			if proto == "" {
				fs.log.Debug("--forward-all: port skipped: neither TCP nor UDP", "service", name, "port", p.Port, "protocol", p.Protocol)
				continue
			}
			if !ip.IsValid() {
				ip = fs.addrFor(name)
			}
			lp := int(p.Port)
			if lp < 1024 {
				lp += lowPortOffset
				if !fs.lowNoted {
					fs.lowNoted = true
					fs.note("--forward-all: Service ports below 1024 listen on %d+port (binding them needs root), e.g. %s:%d for %s:%d", lowPortOffset, ip, lp, name, p.Port)
				}
			}
			want = append(want, Forward{
				Service: name, Port: p.Port, Protocol: proto,
				Local:  net.JoinHostPort(ip.String(), strconv.Itoa(lp)),
				Remote: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(p.Port))),
			})
		}
	}
	have := fs.bySvc[name]
	var keep []openForward
	for _, o := range have {
		if slices.Contains(want, o.Forward) {
			keep = append(keep, o)
			continue
		}
		_ = o.closer.Close()
		fs.note("stopped forwarding %s", o.Forward)
	}
	var now []openForward
	for _, f := range want {
		if i := slices.IndexFunc(keep, func(o openForward) bool { return o.Forward == f }); i >= 0 {
			now = append(now, keep[i])
			continue
		}
		o, err := fs.open(ctx, f)
		if err != nil {
			fs.log.Warn("--forward-all: port skipped: cannot listen", "service", name, "port", f.Port, "protocol", f.network(), "local", f.Local, "err", err)
			continue
		}
		now = append(now, o)
	}
	if len(now) == 0 {
		delete(fs.bySvc, name)
	} else {
		fs.bySvc[name] = now
	}
}

// open binds f and says so; the result has the bound address.
func (fs *forwardSet) open(ctx context.Context, f Forward) (openForward, error) {
	addr, closer, err := fs.listen(ctx, f.network(), f.Local, f.Remote)
	if err != nil {
		return openForward{}, err
	}
	f.Local = addr.String()
	fs.note("forwarding %s", f)
	return openForward{Forward: f, closer: closer}, nil
}

// openExplicit opens a --forward listener and records it.
func (fs *forwardSet) openExplicit(ctx context.Context, f Forward) error {
	o, err := fs.open(ctx, f)
	if err != nil {
		return err
	}
	fs.mu.Lock()
	fs.explicit = append(fs.explicit, o)
	fs.mu.Unlock()
	return nil
}

// addrFor returns name's loopback address, handing out the next one the
// first time. A Service that comes back gets its old address. Called with mu held.
func (fs *forwardSet) addrFor(name string) netip.Addr {
	ip, ok := fs.addrs[name]
	if !ok {
		ip, fs.next = fs.next, fs.next.Next()
		fs.addrs[name] = ip
	}
	return ip
}

// list returns the open forwards: --forward ones in order, then the
// --forward-all ones by address.
func (fs *forwardSet) list() []Forward {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var out []Forward
	for _, o := range fs.explicit {
		out = append(out, o.Forward)
	}
	names := make([]string, 0, len(fs.bySvc))
	for name := range fs.bySvc {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return fs.addrs[a].Compare(fs.addrs[b]) })
	for _, name := range names {
		for _, o := range fs.bySvc[name] {
			out = append(out, o.Forward)
		}
	}
	return out
}

// stop ends the watch, then closes every listener. Idempotent.
func (fs *forwardSet) stop() {
	if fs.stopWatch != nil {
		fs.stopWatch()
		<-fs.watchDone
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, o := range fs.explicit {
		_ = o.closer.Close()
	}
	for _, os := range fs.bySvc {
		for _, o := range os {
			_ = o.closer.Close()
		}
	}
	fs.explicit, fs.bySvc = nil, map[string][]openForward{}
}

// protocolOf returns "tcp" or "udp" for a Service port, "" for others (SCTP).
func protocolOf(p corev1.ServicePort) string {
	switch p.Protocol {
	case "", corev1.ProtocolTCP:
		return "tcp"
	case corev1.ProtocolUDP:
		return "udp"
	}
	return ""
}

// otherPort suggests a local port instead of p: 10000 up, or down when
// that leaves the port range.
func otherPort(p int) int {
	if p+lowPortOffset > 65535 {
		return p - lowPortOffset
	}
	return p + lowPortOffset
}

func hasClusterIP(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone
}

func isAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	_, err = netip.ParseAddr(host)
	return err == nil || host == "localhost"
}

// parseServiceForward splits SVC[:PORT][=LOCALPORT].
func parseServiceForward(spec string) (name, port string, localPort int, err error) {
	left, lp, hasLocal := strings.Cut(spec, "=")
	name, port, _ = strings.Cut(left, ":")
	if name == "" || strings.ContainsAny(name, "./ ") {
		return "", "", 0, fmt.Errorf("--forward %q: want SVC[:PORT][=LOCALPORT] (a Service of the connected namespace) or [udp:]LOCAL=REMOTE addresses", spec)
	}
	if hasLocal {
		if localPort, err = strconv.Atoi(lp); err != nil || localPort < 1 || localPort > 65535 {
			return "", "", 0, fmt.Errorf("--forward %q: local port %q: want 1-65535", spec, lp)
		}
	}
	return name, port, localPort, nil
}
