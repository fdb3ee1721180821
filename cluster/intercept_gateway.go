package cluster

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// GatewayPatcher is the gateway's side of intercepts: it finds the workload
// behind a Service port and patches or restores it with the gateway's own
// ServiceAccount. The gateway patches on a developer's behalf, after a
// SubjectAccessReview of the developer's own right to update the workload,
// so the sidecar's image and relay are the gateway's (no workstation
// chooses what runs in a colleague's pods), a developer's Role needs no
// `create pods` (which would let anyone run a pod as the gateway's
// ServiceAccount), and the gateway restores what it patched even when the
// workstation never comes back.
type GatewayPatcher struct {
	Client    kubernetes.Interface
	Namespace string // the gateway's: it patches only there

	mu      sync.Mutex
	sidecar *SidecarSpec // image, pull policy and relay, read once from the gateway's own objects
}

// Resolve names the workload that serves ns/service's port ("" = its only
// one).
func (p *GatewayPatcher) Resolve(ctx context.Context, ns, service, port string) (InterceptTarget, error) {
	if ns != p.Namespace {
		return InterceptTarget{}, fmt.Errorf("service %s/%s: this gateway intercepts only in its namespace %q (`bridgetun up -n %s`)", ns, service, p.Namespace, ns)
	}
	return ResolveInterceptTarget(ctx, p.Client, ns, service, port)
}

// Patch adds the sidecar to t's workload for a workstation's intercept
// (grace and patchedBy are recorded on the workload, so a restarted gateway
// honours them) and reports whether the template changed. The sidecar runs
// the gateway's own image and reaches the gateway's relay Service.
func (p *GatewayPatcher) Patch(ctx context.Context, t InterceptTarget, grace time.Duration, patchedBy string) (bool, error) {
	if t.Namespace != p.Namespace {
		return false, fmt.Errorf("%s: this gateway patches only in its namespace %q", t.Ref(), p.Namespace)
	}
	spec, err := p.sidecarSpec(ctx)
	if err != nil {
		return false, err
	}
	spec.Grace, spec.PatchedBy = grace, patchedBy
	return PatchWorkload(ctx, p.Client, t, spec)
}

// Restore puts ref's original pod template back (false: it was not patched).
func (p *GatewayPatcher) Restore(ctx context.Context, ref WorkloadRef) (bool, error) {
	if ref.Namespace != p.Namespace {
		return false, fmt.Errorf("%s: this gateway restores only in its namespace %q", ref, p.Namespace)
	}
	return RestoreWorkload(ctx, p.Client, ref)
}

// sidecarSpec reads the gateway Deployment's image and pull policy and the
// relay Service's address, once: both change only with a reinstall, which
// replaces this gateway.
func (p *GatewayPatcher) sidecarSpec(ctx context.Context) (SidecarSpec, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sidecar != nil {
		return *p.sidecar, nil
	}
	d, err := p.Client.AppsV1().Deployments(p.Namespace).Get(ctx, GatewayName, metav1.GetOptions{})
	if err != nil {
		return SidecarSpec{}, fmt.Errorf("gateway deployment %s/%s (its image is the sidecar's): %w", p.Namespace, GatewayName, err)
	}
	var c *corev1.Container
	for i := range d.Spec.Template.Spec.Containers {
		if d.Spec.Template.Spec.Containers[i].Name == GatewayContainer {
			c = &d.Spec.Template.Spec.Containers[i]
		}
	}
	if c == nil {
		return SidecarSpec{}, fmt.Errorf("gateway deployment %s/%s has no %q container: reinstall it (`bridgetun install --upgrade`)", p.Namespace, GatewayName, GatewayContainer)
	}
	svc, err := p.Client.CoreV1().Services(p.Namespace).Get(ctx, RelayName, metav1.GetOptions{})
	if err != nil {
		return SidecarSpec{}, fmt.Errorf("relay service %s/%s: %w (reinstall the gateway: `bridgetun install --upgrade`)", p.Namespace, RelayName, err)
	}
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return SidecarSpec{}, fmt.Errorf("relay service %s/%s has no cluster IP: reinstall the gateway (`bridgetun install --upgrade`)", p.Namespace, RelayName)
	}
	p.sidecar = &SidecarSpec{
		Image: c.Image, PullPolicy: c.ImagePullPolicy,
		Relay: net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(RelayPort)),
	}
	return *p.sidecar, nil
}
