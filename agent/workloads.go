package agent

import (
	"context"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
)

// WorkloadPatcher patches and restores intercepted workloads with the
// gateway's own ServiceAccount; the agent binary implements it with
// cluster.GatewayPatcher (this package stays client-go free). The gateway,
// not the workstation, writes the sidecar, so its image and relay are the
// gateway's and developers' Roles need no `create pods`.
type WorkloadPatcher interface {
	// Resolve names the workload behind ns/service's port ("" = its only one).
	Resolve(ctx context.Context, ns, service, port string) (api.Workload, error)
	// Patch adds the sidecar to w for an intercept of ns/service's port,
	// recording grace and the patching workstation's key, and reports
	// whether the template changed. It refuses when the Service is no
	// longer served by w.
	Patch(ctx context.Context, ns, service, port string, w api.Workload, grace time.Duration, patchedBy string) (changed bool, err error)
	// Restore puts w's original pod template back; false: it was not patched.
	Restore(ctx context.Context, w api.Workload) (restored bool, err error)
}
