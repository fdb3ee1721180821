package session

import (
	"context"
	"fmt"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// Leave ends the intercept of service: the gateway forgets it and, when no
// one else intercepts the workload, its original pod template comes back.
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
	ic.mu.Unlock()
	if !ok {
		return ""
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
		// workload itself once no lease remains.
		ic.cfg.Progress("left %s; the gateway did not answer (%v): it restores %s when no intercept remains", st.req.Service, err, st.ref)
		return "gateway unreachable: it restores the workload when no intercept remains"
	case lr.Remaining > 0:
		ic.cfg.Progress("left %s; %d other intercept(s) keep %s patched", st.req.Service, lr.Remaining, st.ref)
		return fmt.Sprintf("%d other intercept(s) keep %s patched", lr.Remaining, st.ref)
	}
	ic.restoreWorkload(st.ref)
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

func (ic *interceptor) restoreWorkload(ref cluster.WorkloadRef) {
	ctx, cancel := context.WithTimeout(context.Background(), ic.cfg.RolloutTimeout)
	defer cancel()
	if _, err := cluster.RestoreWorkload(ctx, ic.cfg.Client, ref); err != nil {
		ic.cfg.Log.Warn("restore workload", "workload", ref.String(), "err", err)
		return
	}
	if err := cluster.WaitRollout(ctx, ic.cfg.Client, ref); err != nil {
		ic.cfg.Log.Warn("restored workload rollout", "workload", ref.String(), "err", err)
	}
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

// Run keeps the leases alive until ctx ends; intercepts the gateway no
// longer knows (it restarted) are added again. Then it ends every
// intercept, so the workloads are restored while the tunnel still stands.
func (ic *interceptor) Run(ctx context.Context) error {
	t := time.NewTicker(ic.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			ic.leaveAll()
			return nil
		case <-t.C:
		}
		ic.renew(ctx)
	}
}

// renew extends the leases of every intercept once.
func (ic *interceptor) renew(ctx context.Context) {
	ic.mu.Lock()
	byID := map[string]*interceptState{}
	for _, st := range ic.byService {
		byID[st.info.ID] = st
	}
	ic.mu.Unlock()
	if len(byID) == 0 {
		return
	}
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	rr, err := ic.cfg.Control.RenewIntercepts(rctx, api.RenewRequest{PublicKey: ic.cfg.PublicKey, IDs: ids})
	if err != nil {
		cancel()
		ic.cfg.Log.Warn("renew intercept leases", "err", err)
		return
	}
	for _, id := range rr.Unknown {
		st, ok := byID[id]
		if !ok {
			continue // not one of ours
		}
		if _, err := ic.cfg.Control.AddIntercept(rctx, st.req); err != nil {
			ic.cfg.Log.Warn("re-add intercept after a gateway restart", "service", st.req.Service, "err", err)
		} else {
			ic.cfg.Log.Info("intercept re-added (the gateway had forgotten it)", "service", st.req.Service)
		}
	}
	cancel()
}

// Repair restores workloads a crashed session left patched:
// patched, in our namespace, and held by no live intercept at the gateway.
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
	for _, it := range live {
		held[it.Workload] = true
	}
	for _, ref := range refs {
		if held[api.Workload{Namespace: ref.Namespace, Kind: ref.Kind, Name: ref.Name}] {
			continue
		}
		if _, err := cluster.RestoreWorkload(ctx, ic.cfg.Client, ref); err != nil {
			ic.cfg.Log.Warn("repair: restore", "workload", ref.String(), "err", err)
			continue
		}
		ic.cfg.Progress("repaired a previous session's leftovers: restored %s", ref)
	}
}
