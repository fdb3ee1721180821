package main

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/cluster"
)

// clusterAuth is the gateway's agent.Authenticator and agent.Authorizer:
// cluster.Verifier (TokenReview, identity CSRs, SubjectAccessReview, each
// cached briefly) behind the agent package's Kubernetes-free interfaces.
// The gateway builds one and hands it to the control API and the relay.
type clusterAuth struct{ v *cluster.Verifier }

var (
	_ agent.Authenticator = (*clusterAuth)(nil)
	_ agent.Authorizer    = (*clusterAuth)(nil)
)

func newClusterAuth(client kubernetes.Interface) *clusterAuth {
	return &clusterAuth{v: &cluster.Verifier{Client: client}}
}

// AuthenticateToken implements agent.Authenticator.
func (a *clusterAuth) AuthenticateToken(ctx context.Context, token string, audiences []string) (agent.Identity, error) {
	info, err := a.v.AuthenticateToken(ctx, token, audiences)
	if err != nil {
		return agent.Identity{}, authError(err)
	}
	return identityOf(info), nil
}

// AuthenticateCSR implements agent.Authenticator.
func (a *clusterAuth) AuthenticateCSR(ctx context.Context, name, secret string) (agent.Identity, error) {
	info, err := a.v.AuthenticateCSR(ctx, name, secret)
	if err != nil {
		return agent.Identity{}, authError(err)
	}
	return identityOf(info), nil
}

// Allowed implements agent.Authorizer.
func (a *clusterAuth) Allowed(ctx context.Context, id agent.Identity, x agent.Access) (bool, error) {
	info := cluster.UserInfo{User: id.User, UID: id.UID, Groups: id.Groups, Extra: id.Extra}
	check := cluster.AccessCheck{Verb: x.Verb, Group: x.Group, Resource: x.Resource, Subresource: x.Subresource}
	return a.v.Allowed(ctx, info, check, x.Namespace, x.Name)
}

// authError maps the API server's refusal to agent.ErrUnauthenticated
// (401); other errors (the API server unreachable) stay as they are.
func authError(err error) error {
	if errors.Is(err, cluster.ErrNotAuthenticated) {
		return fmt.Errorf("%w: %w", agent.ErrUnauthenticated, err)
	}
	return err
}

func identityOf(info cluster.UserInfo) agent.Identity {
	return agent.Identity{User: info.User, UID: info.UID, Groups: info.Groups, Extra: info.Extra}
}

// sidecarPods is the relay's agent.SidecarPods: a sidecar's pod must be
// in the gateway's namespace (intercepts live there, and so do the
// gateway's read rights) and back the Service it asks about.
type sidecarPods struct {
	client kubernetes.Interface
	ns     string
}

var _ agent.SidecarPods = sidecarPods{}

// Backs implements agent.SidecarPods.
func (p sidecarPods) Backs(ctx context.Context, pod agent.SidecarPod, svc string) (bool, error) {
	if pod.Namespace != p.ns {
		return false, nil
	}
	return cluster.PodBacksService(ctx, p.client, pod.Namespace, pod.Name, pod.UID, pod.ServiceAccount, svc)
}
