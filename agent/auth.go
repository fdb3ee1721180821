package agent

import (
	"context"
	"errors"
)

// Identity is a caller as the Kubernetes API server vouched for it.
type Identity struct {
	User   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// Valid reports whether the identity names someone.
func (id Identity) Valid() bool { return id.User != "" }

// Pod returns the pod a bound ServiceAccount token was issued for
// (the API server's authentication.kubernetes.io/pod-name and pod-uid
// extras), or empty strings.
func (id Identity) Pod() (name, uid string) {
	first := func(k string) string {
		if v := id.Extra[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return first("authentication.kubernetes.io/pod-name"), first("authentication.kubernetes.io/pod-uid")
}

// ErrUnauthenticated: the credential is missing, expired or not accepted
// by the API server (HTTP 401).
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrForbidden: the caller is known but not allowed (HTTP 403).
var ErrForbidden = errors.New("forbidden")

// Authenticator verifies credentials with the API server. The agent
// package stays Kubernetes-free: cmd/bridgetun-agent wires
// cluster.TokenReviewer in.
type Authenticator interface {
	// AuthenticateToken verifies a bearer token (TokenReview); audiences
	// nil = the API server's own.
	AuthenticateToken(ctx context.Context, token string, audiences []string) (Identity, error)
	// AuthenticateCSR verifies an identity CSR: the API server stamped
	// it with its creator's name; its subject must carry sha256(secret).
	AuthenticateCSR(ctx context.Context, name, secret string) (Identity, error)
}

// Authorizer asks the API server whether an identity may do something
// (SubjectAccessReview), so the gateway acts on a caller's behalf only
// within the caller's own rights.
type Authorizer interface {
	Allowed(ctx context.Context, id Identity, a Access) (bool, error)
}

// Access is one Kubernetes permission on one object.
type Access struct {
	Verb, Group, Resource, Subresource, Namespace, Name string
}
