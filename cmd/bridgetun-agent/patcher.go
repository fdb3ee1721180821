package main

import (
	"context"
	"fmt"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// patcher is agent.WorkloadPatcher over cluster.GatewayPatcher: the
// gateway patches intercepted workloads on callers' behalf with its own
// ServiceAccount (RBAC: its namespace only).
type patcher struct{ gp *cluster.GatewayPatcher }

func workloadOf(t cluster.InterceptTarget) api.Workload {
	return api.Workload{Namespace: t.Namespace, Kind: t.Kind, Name: t.Name}
}

func (p patcher) Resolve(ctx context.Context, ns, service, port string) (api.Workload, error) {
	t, err := p.gp.Resolve(ctx, ns, service, port)
	if err != nil {
		return api.Workload{}, err
	}
	return workloadOf(t), nil
}

// Patch resolves the Service again: the workload behind it may have
// changed since the caller's rights on w were checked, and only w may be
// patched.
func (p patcher) Patch(ctx context.Context, ns, service, port string, w api.Workload, grace time.Duration, patchedBy string) (bool, error) {
	t, err := p.gp.Resolve(ctx, ns, service, port)
	if err != nil {
		return false, err
	}
	if got := workloadOf(t); got != w {
		return false, fmt.Errorf("service %s/%s is now served by %s/%s, not %s/%s: intercept it again", ns, service, got.Kind, got.Name, w.Kind, w.Name)
	}
	return p.gp.Patch(ctx, t, grace, patchedBy)
}

func (p patcher) Restore(ctx context.Context, w api.Workload) (bool, error) {
	return p.gp.Restore(ctx, cluster.WorkloadRef{Namespace: w.Namespace, Kind: w.Kind, Name: w.Name})
}
