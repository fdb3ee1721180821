package cluster

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/version"
)

// Options selects a kubeconfig, context and namespace. Zero values mean
// kubectl's defaults.
type Options struct {
	Kubeconfig string // "" = $KUBECONFIG, else ~/.kube/config (in-cluster config when neither exists)
	Context    string // "" = the kubeconfig's current context
	Namespace  string // "" = the context's namespace, else "default"
	// ReadAs is whose kubeconfig it is. When root acts for a user (sudo),
	// their files are read with their rights and "" above means their
	// $KUBECONFIG if sudo kept it, else their ~/.kube/config (not root's).
	// nil = this process's own.
	ReadAs *invoker.User

	ProbeTimeout time.Duration // bound on the reachability probe; 0 = 10s
}

// Conn is a connection to one cluster through one kubeconfig context.
type Conn struct {
	Config    *rest.Config
	Client    kubernetes.Interface
	Context   string // the context in use (name); "" for in-cluster config
	Namespace string // effective namespace
	Host      string // API server URL
}

// DefaultProbeTimeout bounds Connect's reachability probe.
const DefaultProbeTimeout = 10 * time.Second

// Connect loads the kubeconfig like kubectl, builds a client and probes the
// API server (GET /version) so that an unreachable cluster or rejected
// credentials fail here, with a one-line error that says what to do.
func Connect(ctx context.Context, o Options) (*Conn, error) {
	rules, u := loadingRules(o.ReadAs)
	if o.Kubeconfig != "" {
		if err := u.Do(func() error { _, err := os.Stat(o.Kubeconfig); return err }); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %v: pass an existing file with --kubeconfig", o.Kubeconfig, errors.Unwrap(err))
		}
		rules.ExplicitPath = o.Kubeconfig
	}
	if err := readable(u, rules); err != nil {
		return nil, err
	}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	overrides.Context.Namespace = o.Namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)

	// Every load reads the files: each is done with the user's rights.
	var raw clientcmdapi.Config
	if err := u.Do(func() (err error) { raw, err = cc.RawConfig(); return err }); err != nil {
		return nil, fmt.Errorf("load kubeconfig: %s: fix the file or pass another with --kubeconfig", oneLine(err))
	}
	contextName := raw.CurrentContext
	if o.Context != "" {
		contextName = o.Context
	}
	if contextName != "" {
		if _, ok := raw.Contexts[contextName]; !ok {
			return nil, fmt.Errorf("context %q not found in kubeconfig (%s): pass --context with one of: %s",
				contextName, kubeconfigSource(rules), strings.Join(contextNames(raw.Contexts), ", "))
		}
	}

	var cfg *rest.Config
	err := u.Do(func() (err error) { cfg, err = cc.ClientConfig(); return err })
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			if u.Acting() {
				return nil, fmt.Errorf("no kubeconfig for %s (looked for %s): sudo drops KUBECONFIG, keep it with `sudo --preserve-env=KUBECONFIG`, or pass --kubeconfig", u.Name, kubeconfigSource(rules))
			}
			return nil, errors.New("no kubeconfig: set KUBECONFIG or pass --kubeconfig")
		}
		if u.Acting() && errors.Is(err, os.ErrPermission) {
			// A file it names (client key, CA) the user cannot read.
			return nil, fmt.Errorf("context %q: %s (read as %s, for whom sudo runs bridgetun): let %s read it, or pass another --kubeconfig", contextName, oneLine(err), u, u.Name)
		}
		return nil, fmt.Errorf("context %q: %s: fix the kubeconfig or pass another --context", contextName, oneLine(err))
	}
	var ns string
	err = u.Do(func() (err error) { ns, _, err = cc.Namespace(); return err })
	if err != nil {
		return nil, fmt.Errorf("context %q: namespace: %s", contextName, oneLine(err))
	}
	if ns == "" {
		ns = "default"
	}
	if len(raw.Contexts) == 0 {
		contextName = "" // in-cluster config
	}

	cfg.UserAgent = "bridgetun/" + version.Version
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %q: client for %s: %s", contextName, cfg.Host, oneLine(err))
	}
	c := &Conn{Config: cfg, Client: client, Context: contextName, Namespace: ns, Host: cfg.Host}
	if err := c.probe(ctx, o.ProbeTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

// probe asks the API server for its version within timeout and classifies
// the failure.
func (c *Conn) probe(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := c.Client.Discovery().RESTClient().Get().AbsPath("/version").Do(pctx).Error()
	if err == nil {
		return nil
	}
	// A cancelled caller is not the cluster's fault.
	if ctx.Err() != nil {
		return fmt.Errorf("%s: probe API server %s: %w", c.what(), c.Host, ctx.Err())
	}
	return c.classify(err, timeout)
}

func (c *Conn) what() string {
	if c.Context == "" {
		return "in-cluster config"
	}
	return fmt.Sprintf("context %q", c.Context)
}

// classify turns a probe error into the one-line error a user sees.
func (c *Conn) classify(err error, timeout time.Duration) error {
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s: API server %s rejected the credentials (%s): log in again or refresh the kubeconfig's credentials", c.what(), c.Host, oneLine(err))
	case apierrors.IsForbidden(err):
		return nil // authenticated and answering; RBAC is CheckAccess's business
	}
	var ue *url.Error
	var certErr *x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidErr x509.CertificateInvalidError
	switch {
	case errors.As(err, &certErr), errors.As(err, &hostErr), errors.As(err, &invalidErr):
		return fmt.Errorf("%s: API server %s: TLS verification failed (%s): check the kubeconfig's certificate-authority-data and server address", c.what(), c.Host, oneLine(innermost(err)))
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fmt.Errorf("%s: API server %s: unreachable (no answer within %s): check the cluster is running and your network", c.what(), c.Host, timeout)
	case errors.As(err, &ue):
		return fmt.Errorf("%s: API server %s: unreachable (%s): check the cluster is running and your network", c.what(), c.Host, oneLine(innermost(err)))
	}
	return fmt.Errorf("%s: API server %s: %s: check the cluster is running and your network", c.what(), c.Host, oneLine(err))
}

// CheckAccess is CheckAccess with the error naming this connection's context.
func (c *Conn) CheckAccess(ctx context.Context, ns string, checks []AccessCheck) error {
	if err := CheckAccess(ctx, c.Client, ns, checks); err != nil {
		return fmt.Errorf("%s: %w", c.what(), err)
	}
	return nil
}

// APIServerAddrs returns the IP addresses of the API server's host: the
// literal address, or what the host name resolves to. They must never be
// routed into the tunnel, or the tunnel would cut its own transport.
func (c *Conn) APIServerAddrs(ctx context.Context) ([]netip.Addr, error) {
	host := c.Host
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("API server address %q: %w", c.Host, err)
	}
	name := u.Hostname()
	if a, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{a.Unmap()}, nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, fmt.Errorf("resolve API server host %q: %w", name, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// loadingRules are kubectl's, and under sudo the invoking user's: their
// $KUBECONFIG when sudo kept it, else their ~/.kube/config — never root's,
// and nothing migrated or written.
func loadingRules(readAs *invoker.User) (*clientcmd.ClientConfigLoadingRules, *invoker.User) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if readAs == nil || !readAs.Acting() {
		return rules, invoker.Self()
	}
	rules.MigrationRules = nil
	if os.Getenv(clientcmd.RecommendedConfigPathEnvVar) == "" {
		rules.Precedence = nil
		if readAs.Home != "" {
			rules.Precedence = []string{filepath.Join(readAs.Home, clientcmd.RecommendedHomeDir, clientcmd.RecommendedFileName)}
		}
	}
	return rules, readAs
}

// readable checks, with the user's rights, that every kubeconfig file
// that exists can be read, so that an unreadable one is named in one line
// (clientcmd would skip or bury it).
func readable(u *invoker.User, rules *clientcmd.ClientConfigLoadingRules) error {
	files := rules.Precedence
	if rules.ExplicitPath != "" {
		files = []string{rules.ExplicitPath}
	}
	for _, f := range files {
		err := u.Do(func() error {
			fh, err := os.Open(f)
			if err == nil {
				fh.Close()
			}
			return err
		})
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist):
		case errors.Is(err, os.ErrPermission) && u.Acting():
			return fmt.Errorf("kubeconfig %s: permission denied (read as %s, for whom sudo runs bridgetun): let %s read it, or pass another with --kubeconfig", f, u, u.Name)
		default:
			return fmt.Errorf("kubeconfig %s: %v: fix its permissions or pass another with --kubeconfig", f, errors.Unwrap(err))
		}
	}
	return nil
}

func kubeconfigSource(r *clientcmd.ClientConfigLoadingRules) string {
	if r.ExplicitPath != "" {
		return r.ExplicitPath
	}
	return strings.Join(r.Precedence, string(os.PathListSeparator))
}

func contextNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return []string{"(none)"}
	}
	return names
}

// innermost unwraps a *url.Error (which repeats the method and URL) to its cause.
func innermost(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// oneLine flattens multi-line error text (clientcmd aggregates) to one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
