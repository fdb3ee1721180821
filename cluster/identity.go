package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent/api"
)

// UserInfo is a caller as the API server vouched for it.
type UserInfo struct {
	User   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// ErrNotAuthenticated: the API server did not accept the credential.
var ErrNotAuthenticated = errors.New("not authenticated")

// Verifier checks callers' credentials and rights with the API server, for
// the gateway: TokenReview, identity CSRs and SubjectAccessReview. Results
// are cached briefly by a hash of the credential (never the credential
// itself), so a busy control API does not call the API server per request.
type Verifier struct {
	Client kubernetes.Interface
	TTL    time.Duration // cache lifetime of tokens and rights; 0 = 1 minute
	// CSRTTL is how long an identity CSR's verdict is kept: the CSR is
	// deleted once verified (it is single-use), so this is the session's
	// standing until the gateway restarts or it runs out; 0 = 12 hours.
	CSRTTL time.Duration
	Now    func() time.Time

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	info    UserInfo
	expires time.Time
}

func (v *Verifier) ttl() time.Duration {
	if v.TTL == 0 {
		return time.Minute
	}
	return v.TTL
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

func (v *Verifier) lookup(key string) (UserInfo, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	c, ok := v.cache[key]
	if !ok || v.now().After(c.expires) {
		delete(v.cache, key)
		return UserInfo{}, false
	}
	return c.info, true
}

func (v *Verifier) store(key string, info UserInfo) { v.storeFor(key, info, v.ttl()) }

func (v *Verifier) storeFor(key string, info UserInfo, ttl time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.cache == nil {
		v.cache = map[string]cached{}
	}
	if len(v.cache) > 4096 { // bounded: drop everything rather than grow
		v.cache = map[string]cached{}
	}
	v.cache[key] = cached{info: info, expires: v.now().Add(ttl)}
}

// AuthenticateToken verifies a bearer token with a TokenReview (audiences
// nil = the API server's own).
func (v *Verifier) AuthenticateToken(ctx context.Context, token string, audiences []string) (UserInfo, error) {
	if token == "" {
		return UserInfo{}, fmt.Errorf("%w: no bearer token", ErrNotAuthenticated)
	}
	key := "t:" + strings.Join(audiences, ",") + ":" + hashHex(token)
	if info, ok := v.lookup(key); ok {
		return info, nil
	}
	tr, err := v.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return UserInfo{}, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated {
		reason := tr.Status.Error
		if reason == "" {
			reason = "the API server did not accept the token"
		}
		return UserInfo{}, fmt.Errorf("%w: %s", ErrNotAuthenticated, reason)
	}
	u := tr.Status.User
	info := UserInfo{User: u.Username, UID: u.UID, Groups: u.Groups, Extra: map[string][]string{}}
	for k, e := range u.Extra {
		info.Extra[k] = []string(e)
	}
	v.store(key, info)
	return info, nil
}

// identityCSRPrefix starts the subject common name of an identity CSR;
// the rest is hex(sha256(secret)).
const identityCSRPrefix = "bridgetun-identity:"

// identityCSRMaxAge bounds how old an identity CSR may be when first
// presented (a session re-creates one after a gateway restart).
const identityCSRMaxAge = 10 * time.Minute

// AuthenticateCSR verifies an identity CSR: signer api.IdentitySignerName,
// subject carrying sha256(secret), created recently. Its spec.username is
// set by the API server from whoever created it, so it vouches for a
// caller whose kubeconfig has no bearer token (client certificates). The
// verified identity is cached for CSRTTL per CSR and secret, and the CSR
// is deleted (single use: nobody can present it again after a gateway
// restart; the workstation makes a new one when told 401).
func (v *Verifier) AuthenticateCSR(ctx context.Context, name, secret string) (UserInfo, error) {
	if name == "" || secret == "" {
		return UserInfo{}, fmt.Errorf("%w: identity CSR name or secret missing", ErrNotAuthenticated)
	}
	key := "c:" + name + ":" + hashHex(secret)
	if info, ok := v.lookup(key); ok {
		return info, nil
	}
	csr, err := v.Client.CertificatesV1().CertificateSigningRequests().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return UserInfo{}, fmt.Errorf("%w: identity CSR %s does not exist", ErrNotAuthenticated, name)
	}
	if err != nil {
		return UserInfo{}, fmt.Errorf("identity CSR %s: %w", name, err)
	}
	if csr.Spec.SignerName != api.IdentitySignerName {
		return UserInfo{}, fmt.Errorf("%w: CSR %s has signer %q, not %q", ErrNotAuthenticated, name, csr.Spec.SignerName, api.IdentitySignerName)
	}
	block, _ := pem.Decode(csr.Spec.Request)
	if block == nil {
		return UserInfo{}, fmt.Errorf("%w: CSR %s: request is not PEM", ErrNotAuthenticated, name)
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return UserInfo{}, fmt.Errorf("%w: CSR %s: %v", ErrNotAuthenticated, name, err)
	}
	if req.Subject.CommonName != identityCSRPrefix+hashHex(secret) {
		return UserInfo{}, fmt.Errorf("%w: CSR %s was not made with this secret", ErrNotAuthenticated, name)
	}
	if age := v.now().Sub(csr.CreationTimestamp.Time); age > identityCSRMaxAge {
		return UserInfo{}, fmt.Errorf("%w: identity CSR %s is %s old: make a new one", ErrNotAuthenticated, name, age.Round(time.Second))
	}
	if csr.Spec.Username == "" {
		return UserInfo{}, fmt.Errorf("%w: CSR %s names no creator", ErrNotAuthenticated, name)
	}
	info := UserInfo{User: csr.Spec.Username, UID: csr.Spec.UID, Groups: csr.Spec.Groups, Extra: map[string][]string{}}
	for k, e := range csr.Spec.Extra {
		info.Extra[k] = []string(e)
	}
	ttl := v.CSRTTL
	if ttl == 0 {
		ttl = 12 * time.Hour
	}
	v.storeFor(key, info, ttl)
	_ = DeleteIdentityCSR(ctx, v.Client, name) // best effort: the cluster's CSR cleaner removes it too
	return info, nil
}

// Allowed asks the API server whether info may do verb on the object
// (SubjectAccessReview).
func (v *Verifier) Allowed(ctx context.Context, info UserInfo, a AccessCheck, ns, name string) (bool, error) {
	extra := map[string]authorizationv1.ExtraValue{}
	for k, e := range info.Extra {
		extra[k] = e
	}
	sar, err := v.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: info.User, UID: info.UID, Groups: info.Groups, Extra: extra,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Name: name, Verb: a.Verb, Group: a.Group, Resource: a.Resource, Subresource: a.Subresource,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, fmt.Errorf("subject access review for %s: %w", info.User, err)
	}
	return sar.Status.Allowed, nil
}

// CreateIdentityCSR creates an identity CSR for the current user and
// returns its name and the secret to present with it.
func CreateIdentityCSR(ctx context.Context, client kubernetes.Interface) (name, secret string, err error) {
	secret = NewToken()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("identity CSR: key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: identityCSRPrefix + hashHex(secret)},
	}, key)
	if err != nil {
		return "", "", fmt.Errorf("identity CSR: %w", err)
	}
	expire := int32(identityCSRMaxAge / time.Second)
	csr, err := client.CertificatesV1().CertificateSigningRequests().Create(ctx, &certificatesv1.CertificateSigningRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "bridgetun-identity-", Labels: map[string]string{"app.kubernetes.io/part-of": "bridgetun"}},
		Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:           pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
			SignerName:        api.IdentitySignerName,
			Usages:            []certificatesv1.KeyUsage{certificatesv1.UsageClientAuth},
			ExpirationSeconds: &expire,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("prove your identity to the gateway (create a CertificateSigningRequest; your kubeconfig has no bearer token): %w", err)
	}
	return csr.Name, secret, nil
}

// DeleteIdentityCSR removes an identity CSR (best effort: the cluster's
// CSR cleaner removes pending ones after a day).
func DeleteIdentityCSR(ctx context.Context, client kubernetes.Interface, name string) error {
	err := client.CertificatesV1().CertificateSigningRequests().Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete identity CSR %s: %w", name, err)
	}
	return nil
}

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
