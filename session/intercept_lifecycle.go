package session

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// Leave ends the intercept of service: the gateway forgets it and, when no
// one else intercepts the workload, its original pod template comes back.
// Leaving a lost intercept only takes it off the list: it was released
// when it was lost.
func (ic *interceptor) Leave(service string) (string, error) {
	ic.op.Lock()
	defer ic.op.Unlock()
	ic.mu.Lock()
	_, ok := ic.byService[service]
	ic.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("leave: %s is not intercepted by this session (see `bridgetun status`)", service)
	}
	return ic.leaveLocked(service), nil
}

func (ic *interceptor) leaveLocked(service string) string {
	ic.mu.Lock()
	st, ok := ic.byService[service]
	delete(ic.byService, service)
	delete(ic.pending, st)
	lost := ok && st.info.State == InterceptLost
	ic.mu.Unlock()
	if !ok {
		return ""
	}
	if lost {
		ic.cfg.Progress("left %s (it had been lost; nothing to undo)", service)
		return "it had been lost: nothing left to undo"
	}
	// Routes first: the sidecars send new connections to the original at
	// once; the ones in flight here get a moment to finish before the
	// listener and whatever is left (idle keep-alives) are cut.
	lr, err := ic.unregister(st)
	if st.quiesce != nil {
		st.quiesce(time.Second)
	}
	st.close()
	switch {
	case err != nil:
		// Unknown whether others hold it: the gateway restores the
		// workload itself once this intercept's grace ends and no other
		// holds it.
		ic.cfg.Progress("left %s; the gateway did not answer (%v): it restores %s when its grace (%s) ends, unless another intercept holds it", st.req.Service, err, st.ref, roundDuration(st.grace))
		return fmt.Sprintf("gateway unreachable: it restores the workload when the grace (%s) ends, unless another intercept holds it", roundDuration(st.grace))
	case lr.Remaining > 0:
		ic.cfg.Progress("left %s; %d other intercept(s) keep %s patched", st.req.Service, lr.Remaining, st.ref)
		return fmt.Sprintf("%d other intercept(s) keep %s patched", lr.Remaining, st.ref)
	}
	if err := ic.restoreWorkload(st.ref); err != nil {
		ic.cfg.Progress("left %s; the gateway did not restore %s (%v): it does when the grace (%s) ends, unless another intercept holds it", st.req.Service, st.ref, err, roundDuration(st.grace))
		return fmt.Sprintf("the gateway did not restore the workload (%v): it does when the grace (%s) ends, unless another intercept holds it", err, roundDuration(st.grace))
	}
	ic.cfg.Progress("left %s: %s restored", st.req.Service, st.ref)
	return st.ref.String() + " runs its original pod template again"
}

// unregister tells the gateway the intercept is over.
func (ic *interceptor) unregister(st *interceptState) (api.LeaveResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	lr, err := ic.cfg.Control.LeaveIntercept(ctx, api.LeaveRequest{PublicKey: st.req.PublicKey, Namespace: st.req.Namespace, Service: st.req.Service})
	if err != nil {
		ic.cfg.Log.Warn("leave: gateway", "service", st.req.Service, "err", err)
	}
	return lr, err
}

// restoreWorkload has the gateway put ref back and waits for its pods; an
// error means the gateway did not restore it.
func (ic *interceptor) restoreWorkload(ref cluster.WorkloadRef) error {
	ctx, cancel := context.WithTimeout(context.Background(), ic.cfg.RolloutTimeout)
	defer cancel()
	if err := ic.gatewayRestore(ctx, ref); err != nil {
		ic.cfg.Log.Warn("restore workload", "workload", ref.String(), "err", err)
		return err
	}
	if err := cluster.WaitRollout(ctx, ic.cfg.Client, ref); err != nil {
		ic.cfg.Log.Warn("restored workload rollout", "workload", ref.String(), "err", err)
	}
	return nil
}

// leaveAll ends every intercept (down, Ctrl-C).
func (ic *interceptor) leaveAll() {
	ic.op.Lock()
	defer ic.op.Unlock()
	ic.mu.Lock()
	var names []string
	for name := range ic.byService {
		names = append(names, name)
	}
	ic.mu.Unlock()
	for _, name := range names {
		ic.leaveLocked(name)
	}
}

// Run keeps the leases alive until ctx ends: renewals every RenewEvery,
// and a worker that re-attaches intercepts after a sleep or a gateway
// restart (intercept_reattach.go). Then it ends every intercept, so the
// workloads are restored while the tunnel still stands, and returns after
// the worker exited.
func (ic *interceptor) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); ic.reattachLoop(ctx) }()
	t := time.NewTicker(ic.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			ic.leaveAll()
			return nil
		case <-t.C:
		}
		ic.renew(ctx)
	}
}

// Repair restores workloads a crashed session of this machine left
// patched: patched, in our namespace, and held at the gateway by no one
// but this workstation's key (this session holds nothing yet, so such
// entries are a previous session's; they are dropped first). A patch that
// nothing at the gateway holds but that records a grace and another
// workstation's key is left to the gateway: after a gateway restart it may
// be that workstation's, asleep within its grace, and the gateway restores
// it when the grace ends.
func (ic *interceptor) Repair(ctx context.Context) {
	refs, err := cluster.PatchedWorkloads(ctx, ic.cfg.Client, ic.cfg.GatewayNamespace)
	if err != nil {
		ic.cfg.Log.Warn("repair: list patched workloads", "err", err)
		return
	}
	if len(refs) == 0 {
		return
	}
	live, err := ic.cfg.Control.ListIntercepts(ctx, ic.cfg.GatewayNamespace)
	if err != nil {
		ic.cfg.Log.Warn("repair: list live intercepts", "err", err)
		return
	}
	held := map[api.Workload]bool{}
	ours := map[api.Workload][]api.Intercept{}
	for _, it := range live {
		if it.PublicKey == ic.cfg.PublicKey {
			ours[it.Workload] = append(ours[it.Workload], it)
			continue
		}
		held[it.Workload] = true
	}
	for _, ref := range refs {
		w := api.Workload{Namespace: ref.Namespace, Kind: ref.Kind, Name: ref.Name}
		if held[w] || (len(ours[w]) == 0 && ref.Grace > 0 && ref.PatchedBy != ic.cfg.PublicKey) {
			continue
		}
		for _, it := range ours[w] {
			if _, err := ic.cfg.Control.LeaveIntercept(ctx, api.LeaveRequest{PublicKey: it.PublicKey, Namespace: it.Namespace, Service: it.Service}); err != nil {
				ic.cfg.Log.Warn("repair: drop a previous session's intercept", "service", it.Service, "err", err)
			}
		}
		if err := ic.gatewayRestore(ctx, ref); err != nil {
			ic.cfg.Log.Warn("repair: restore", "workload", ref.String(), "err", err)
			continue
		}
		ic.cfg.Progress("repaired a previous session's leftovers: restored %s", ref)
	}
}

// gatewayRestore asks the gateway to restore ref (it patched it, with its
// own ServiceAccount; it checks that we may update the workload and that
// no intercept holds it).
func (ic *interceptor) gatewayRestore(ctx context.Context, ref cluster.WorkloadRef) error {
	_, err := ic.cfg.Control.RestoreWorkload(ctx, api.RestoreRequest{Workload: api.Workload{Namespace: ref.Namespace, Kind: ref.Kind, Name: ref.Name}})
	return err
}
