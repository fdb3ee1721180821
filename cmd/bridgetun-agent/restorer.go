package main

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// restorer lets the gateway put back workloads whose intercepts' leases and
// grace holds ran out, through the Kubernetes API with the gateway's own
// service account (RBAC: its namespace only). It reports each patch's
// recorded grace (the bridgetun.io/grace annotation the workstation wrote
// when patching), so a restarted gateway still holds a sleeping
// workstation's workload. The agent package stays client-go free; this
// wiring is where the two meet.
type restorer struct {
	client kubernetes.Interface
	ns     string
}

func newRestorer(ns string) (*restorer, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster API config (the gateway restores expired intercepts with it): %w", err)
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &restorer{client: c, ns: ns}, nil
}

func (r *restorer) Patched(ctx context.Context) ([]agent.PatchedWorkload, error) {
	refs, err := cluster.PatchedWorkloads(ctx, r.client, r.ns)
	if err != nil {
		return nil, err
	}
	out := make([]agent.PatchedWorkload, 0, len(refs))
	for _, w := range refs {
		out = append(out, agent.PatchedWorkload{Workload: api.Workload{Namespace: w.Namespace, Kind: w.Kind, Name: w.Name}, PatchedAt: w.PatchedAt, Grace: w.Grace})
	}
	return out, nil
}

func (r *restorer) Restore(ctx context.Context, w api.Workload) error {
	_, err := cluster.RestoreWorkload(ctx, r.client, cluster.WorkloadRef{Namespace: w.Namespace, Kind: w.Kind, Name: w.Name})
	return err
}
