package cluster

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bridgetun/bridgetun/agent/api"
)

// CallerCredential is what proves the workstation's user to the gateway:
// the kubeconfig's bearer token (static, token file, exec plugin or auth
// provider: whatever client-go would send), or, for a kubeconfig without
// one (client certificates), an identity CSR and its secret.
type CallerCredential struct {
	Bearer             string
	CSRName, CSRSecret string
	User               string // who the API server says the user is, for messages
}

// Apply sets the credential's headers on a control-API request.
func (c CallerCredential) Apply(h http.Header) {
	if c.Bearer != "" {
		h.Set("Authorization", "Bearer "+c.Bearer)
		return
	}
	h.Set(api.IdentityCSRHeader, c.CSRName)
	h.Set(api.IdentitySecretHeader, c.CSRSecret)
}

// Binding is the hash registration proofs are bound to (the gateway
// computes the same from what it receives).
func (c CallerCredential) Binding() []byte {
	secret := c.Bearer
	if secret == "" {
		secret = c.CSRSecret
	}
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// CredentialSource hands out the current user's CallerCredential. A bearer
// token is looked up again every minute (exec plugins rotate theirs); an
// identity CSR is made once and again only after Invalidate (the gateway
// deletes it once verified, and forgets it when it restarts).
type CredentialSource struct {
	cfg    *rest.Config
	client kubernetes.Interface
	now    func() time.Time

	mu      sync.Mutex
	cur     CallerCredential
	fetched time.Time
}

// NewCredentialSource returns the source for a connection's user.
func NewCredentialSource(conn *Conn) *CredentialSource {
	return &CredentialSource{cfg: conn.Config, client: conn.Client, now: time.Now}
}

// bearerRefresh is how often a bearer token is looked up again.
const bearerRefresh = time.Minute

// Get returns the credential to present now.
func (s *CredentialSource) Get(ctx context.Context) (CallerCredential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fresh := !s.fetched.IsZero() && (s.cur.CSRName != "" || s.now().Sub(s.fetched) < bearerRefresh)
	if fresh {
		return s.cur, nil
	}
	token, user, err := s.bearer(ctx)
	if err != nil {
		return CallerCredential{}, err
	}
	cred := CallerCredential{Bearer: token, User: user}
	if token == "" {
		name, secret, err := CreateIdentityCSR(ctx, s.client)
		if err != nil {
			return CallerCredential{}, err
		}
		cred = CallerCredential{CSRName: name, CSRSecret: secret, User: user}
	}
	s.cur, s.fetched = cred, s.now()
	return cred, nil
}

// Invalidate drops the current credential (the gateway answered 401): the
// next Get looks the token up again or makes a new identity CSR.
func (s *CredentialSource) Invalidate() {
	s.mu.Lock()
	s.fetched = time.Time{}
	s.mu.Unlock()
}

// bearer asks the API server who the user is (SelfSubjectReview) and
// captures the bearer token client-go sends with that request, if any.
// WrapTransport sits inside client-go's authentication round trippers, so
// it sees the header they set.
func (s *CredentialSource) bearer(ctx context.Context) (token, user string, err error) {
	cfg := rest.CopyConfig(s.cfg)
	var mu sync.Mutex
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
				mu.Lock()
				token = t
				mu.Unlock()
			}
			return rt.RoundTrip(r)
		})
	})
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", "", fmt.Errorf("who am I: %w", err)
	}
	rev, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("ask the API server who you are (SelfSubjectReview): %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	return token, rev.Status.UserInfo.Username, nil
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
