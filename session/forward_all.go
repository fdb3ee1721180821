package session

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bridgetun/bridgetun/cluster"
)

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
		fs.cfg.Log.Debug("--forward-all: service skipped: no ClusterIP (headless or ExternalName)", "service", name)
	default:
		var ip netip.Addr
		for _, p := range svc.Spec.Ports {
			proto := protocolOf(p)
			if proto == "" {
				fs.cfg.Log.Debug("--forward-all: port skipped: neither TCP nor UDP", "service", name, "port", p.Port, "protocol", p.Protocol)
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
					fs.cfg.Note("--forward-all: Service ports below 1024 listen on %d+port (binding them needs root), e.g. %s:%d for %s:%d", lowPortOffset, ip, lp, name, p.Port)
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
		fs.cfg.Note("stopped forwarding %s", o.Forward)
	}
	var now []openForward
	for _, f := range want {
		if i := slices.IndexFunc(keep, func(o openForward) bool { return o.Forward == f }); i >= 0 {
			now = append(now, keep[i])
			continue
		}
		o, err := fs.open(ctx, f)
		if err != nil {
			fs.cfg.Log.Warn("--forward-all: port skipped: cannot listen", "service", name, "port", f.Port, "protocol", f.network(), "local", f.Local, "err", err)
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
