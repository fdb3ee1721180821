package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/version"
)

// gatewaySetup is what ensuring the gateway needs.
type gatewaySetup struct {
	Client         kubernetes.Interface
	Namespace      string
	Image          string // for an install or upgrade
	ExposeNodePort bool
	Upgrade        bool
	ReadyWithin    time.Duration // 0 = 90 s
	Progress       func(format string, args ...any)
}

// gatewayPod is the ready gateway pod a session starts with.
type gatewayPod struct {
	Name       string
	Image      string // the sidecar runs the same image
	PullPolicy corev1.PullPolicy
}

// ensureGateway installs the gateway when missing (or when asked to
// upgrade or expose it) and waits for a ready pod of this version. The
// gateway makes its own key at start; no Secret holds it.
//
// A gateway this call installed into a namespace that had none, and that
// never became ready (an image that cannot be pulled, a bad namespace), is
// removed again: a failed first `up` leaves nothing in the cluster.
func ensureGateway(ctx context.Context, g gatewaySetup) (_ gatewayPod, err error) {
	if g.ReadyWithin == 0 {
		g.ReadyWithin = 90 * time.Second
	}
	have, err := cluster.GatewayVersion(ctx, g.Client, g.Namespace)
	fresh := errors.Is(err, cluster.ErrGatewayNotInstalled)
	installed := false
	defer func() {
		if err == nil || !fresh || !installed {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uerr := cluster.UninstallGateway(uctx, g.Client, g.Namespace); uerr != nil {
			err = fmt.Errorf("%w (and removing the gateway it installed failed: %v)", err, uerr)
			return
		}
		err = fmt.Errorf("%w (the gateway it installed in %q was removed again)", err, g.Namespace)
	}()
	if err != nil || have == "" || g.Upgrade || g.ExposeNodePort {
		if err := checkInstallAccess(ctx, g.Client, g.Namespace, fresh); err != nil {
			return gatewayPod{}, err
		}
		spec := cluster.GatewaySpec{Namespace: g.Namespace, Image: g.Image, ExposeNodePort: g.ExposeNodePort, Version: version.Version}
		// Every install and upgrade tells the gateway the cluster's CIDRs
		// anew. Not found = a gateway that dials nothing of the cluster
		// (closed, never open); the session's own discovery says why next.
		if spec.Policy, err = cluster.DiscoverGatewayPolicy(ctx, g.Client, g.Namespace, nil); err != nil {
			g.Progress("warning: %v: the gateway will dial nothing of the cluster until `bridgetun install --upgrade` finds them", err)
		}
		installed = true // also a failed install may have created some objects
		if err := cluster.InstallGateway(ctx, g.Client, spec, g.Upgrade); err != nil {
			return gatewayPod{}, err
		}
		if have == "" {
			g.Progress("installed the gateway in %q (image %s)", g.Namespace, g.Image)
		}
	} else if have != version.Version {
		return gatewayPod{}, fmt.Errorf("gateway in %q runs %s but this client is %s: run `bridgetun install --upgrade` (or `bridgetun up --upgrade`)", g.Namespace, have, version.Version)
	}
	wctx, cancel := context.WithTimeout(ctx, g.ReadyWithin)
	defer cancel()
	var pod *corev1.Pod
	for {
		if pod, err = cluster.WaitGatewayReady(wctx, g.Client, g.Namespace); err != nil {
			return gatewayPod{}, err
		}
		// Right after an upgrade the old pod is still the ready one: wait
		// for a pod of this version.
		if pod.Annotations[cluster.AnnotationVersion] == version.Version {
			break
		}
		select {
		case <-wctx.Done():
			return gatewayPod{}, fmt.Errorf("gateway in %q: no ready pod of version %s after %s (pod %s runs %s)", g.Namespace, version.Version, g.ReadyWithin, pod.Name, pod.Annotations[cluster.AnnotationVersion])
		case <-time.After(500 * time.Millisecond): // polling the rollout
		}
	}
	gp := gatewayPod{Name: pod.Name}
	for _, c := range pod.Spec.Containers {
		if c.Name == cluster.GatewayContainer {
			gp.Image, gp.PullPolicy = c.Image, c.ImagePullPolicy
		}
	}
	g.Progress("gateway ready: pod %s", pod.Name)
	return gp, nil
}

// checkInstallAccess: installing or upgrading needs far more than `up`
// (create the gateway's objects and its cluster-wide review rights); say
// so in one line before anything is created.
func checkInstallAccess(ctx context.Context, client kubernetes.Interface, ns string, fresh bool) error {
	err := cluster.CheckAccess(ctx, client, ns, cluster.InstallAccessChecks(ns))
	if err == nil {
		err = cluster.CheckAccess(ctx, client, "", cluster.InstallClusterAccessChecks())
	}
	if err == nil {
		return nil
	}
	what := "upgrade the gateway in " + ns
	if fresh {
		what = "install the gateway in " + ns + " (there is none)"
	}
	return fmt.Errorf("cannot %s: %w; an admin can run `bridgetun install -n %s`, then `up` needs only `bridgetun install --print-rbac`'s role", what, err, ns)
}
