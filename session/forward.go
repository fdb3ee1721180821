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
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

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
	cfg forwardConfig

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

// forwardConfig is what the forwards need.
type forwardConfig struct {
	Listen    listenFunc           // opens one forward (through the netstack); nil = forwards refused
	Client    kubernetes.Interface // looks Services up and watches them
	Namespace string               // where Service names are looked up
	Specs     []string             // --forward
	All       bool                 // --forward-all
	Log       *slog.Logger         // nil discards
	// Note prints a progress line; nil = log only.
	Note func(format string, args ...any)
}

func newForwardSet(cfg forwardConfig) *forwardSet {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Note == nil {
		log := cfg.Log
		cfg.Note = func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...)) }
	}
	return &forwardSet{cfg: cfg, explicitSvc: map[string]bool{}, bySvc: map[string][]openForward{}, addrs: map[string]netip.Addr{}, next: firstForwardAddr}
}

type openForward struct {
	Forward
	closer io.Closer
}

// Open opens the --forward listeners and, with --forward-all, starts the
// watch that forwards every Service and waits for its first round. A spec
// is [udp:]LOCAL=REMOTE (addresses; TCP unless udp:), or
// SVC[:PORT][=LOCALPORT] (a Service's TCP and UDP ports): each Service gets
// its own loopback address (127.0.0.2, .3, ...), and its Kubernetes-style
// variables point there (see RunEnv). On error nothing stays open.
func (fs *forwardSet) Open(ctx context.Context) (err error) {
	if len(fs.cfg.Specs) == 0 && !fs.cfg.All {
		return nil
	}
	if fs.cfg.Listen == nil {
		return errors.New("--forward and --forward-all need --netstack (in TUN mode, programs reach cluster addresses directly)")
	}
	defer func() {
		if err != nil {
			fs.Close()
		}
	}()
	for _, spec := range fs.cfg.Specs {
		if err := fs.openSpec(ctx, spec); err != nil {
			return err
		}
	}
	if !fs.cfg.All {
		return nil
	}
	ns := fs.cfg.Namespace
	return fs.watch(ctx, ns, func(ctx context.Context, apply cluster.ServiceChangeFunc) {
		cluster.WatchServices(ctx, fs.cfg.Client, ns, apply, fs.cfg.Log)
	})
}

// Run keeps the forwards (and the --forward-all watch) until ctx ends, then
// closes them; it returns after the watch has exited.
func (fs *forwardSet) Run(ctx context.Context) error {
	<-ctx.Done()
	fs.Close()
	return nil
}

// open binds f and says so; the result has the bound address.
func (fs *forwardSet) open(ctx context.Context, f Forward) (openForward, error) {
	addr, closer, err := fs.cfg.Listen(ctx, f.network(), f.Local, f.Remote)
	if err != nil {
		return openForward{}, err
	}
	f.Local = addr.String()
	fs.cfg.Note("forwarding %s", f)
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

// Close ends the watch, then closes every listener. Idempotent.
func (fs *forwardSet) Close() {
	if fs.stopWatch != nil {
		fs.stopWatch()
		<-fs.watchDone
		fs.stopWatch = nil
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
