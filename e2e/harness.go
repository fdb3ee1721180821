package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Names and addresses of the harness (they match e2e/cluster/lib.sh).
const (
	WorkstationNS   = "bt-ws"           // network namespace playing the developer's machine
	WorkstationIP   = "10.89.0.2"       // its address (veth bt-ws-c)
	User            = "bridgetun-e2e"   // unprivileged user for tests run "as the developer"
	NodeIP          = "10.88.0.1"       // node IP: API server :6443 and NodePorts; the only thing bt-ws reaches
	ServiceCIDR     = "10.96.0.0/16"    // Services
	PodCIDR         = "10.244.0.0/16"   // pods (the node uses 10.244.0.0/24)
	ClusterDNS      = "10.96.0.10"      // kube-dns Service
	ClusterDomain   = "cluster.local"   // cluster domain
	GuardTable      = "bridgetun_guard" // nft table (family inet) of the egress/workstation guard
	SampleNamespace = "bt-sample"       // namespace of e2e/testdata/sample-app.yaml
	StateDir        = "/var/tmp/bridgetun-e2e"
	RouteAsHeader   = "Kubernetes-Route-As"
)

// Cluster is a running e2e cluster plus the tools to drive it.
type Cluster struct {
	Kubeconfig     string // admin kubeconfig (root-readable)
	UserKubeconfig string // self-contained admin kubeconfig owned by User, for runs as User
	Client         kubernetes.Interface
	Config         *rest.Config
	Kubectl        string // kubectl binary (the cache's v1.34.4 build when present)
	Testapp        string // host build of e2e/testapp, executable by User: get, dial, udp, lookup, source...
	Repo           string // repository root
	started        bool   // this process ran up.sh (Main tears it down)
	binDir         string
}

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Main runs the package's tests and tears down a cluster that Start started in this process (not a reused one;
// BRIDGETUN_E2E_KEEP=1 keeps it). Use it from TestMain: os.Exit(e2e.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		if shared.started && os.Getenv("BRIDGETUN_E2E_KEEP") == "" {
			cmd := exec.Command(filepath.Join(shared.Repo, "e2e/cluster/down.sh"))
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "e2e: cluster down:", err)
				code = 1
			}
		}
		os.RemoveAll(shared.binDir)
	}
	return code
}

// Start returns the package's shared cluster: the one BRIDGETUN_E2E_KUBECONFIG points at (it must answer; no
// second cluster is started behind its back), else one started with e2e/cluster/up.sh (root needed; up.sh
// reuses a healthy running cluster). Failures are fatal, never skips: make e2e skips nothing silently.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	sharedOnce.Do(func() { shared, sharedErr = start() })
	if sharedErr != nil {
		tb.Fatalf("e2e cluster: %v", sharedErr)
	}
	return shared
}

func start() (*Cluster, error) {
	_, file, _, _ := runtime.Caller(0)
	c := &Cluster{Repo: filepath.Dir(filepath.Dir(file))}
	c.Kubeconfig = os.Getenv("BRIDGETUN_E2E_KUBECONFIG")
	if c.Kubeconfig == "" {
		if os.Geteuid() != 0 {
			return nil, errors.New("set BRIDGETUN_E2E_KUBECONFIG to a running e2e cluster, or run as root to start one (make e2e)")
		}
		check := exec.Command(filepath.Join(c.Repo, "e2e/cluster/up.sh"), "--check")
		c.started = check.Run() != nil
		up := exec.Command(filepath.Join(c.Repo, "e2e/cluster/up.sh"))
		up.Stdout, up.Stderr = os.Stderr, os.Stderr
		if err := up.Run(); err != nil {
			return nil, fmt.Errorf("e2e/cluster/up.sh: %w (its output above names the failed step)", err)
		}
		c.Kubeconfig = filepath.Join(StateDir, "run/pki/admin.kubeconfig")
	}
	c.UserKubeconfig = filepath.Join(StateDir, "run/user/kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c.Config = cfg
	if c.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return nil, fmt.Errorf("API server of %s does not answer /readyz: %w (start it: make cluster-up)", c.Kubeconfig, err)
	}
	if err := exec.Command("ip", "netns", "exec", WorkstationNS, "true").Run(); err != nil {
		return nil, fmt.Errorf("workstation namespace %s missing (%v): run e2e/cluster/up.sh", WorkstationNS, err)
	}
	c.Kubectl = os.Getenv("KUBECTL")
	if c.Kubectl == "" {
		home, _ := os.UserHomeDir()
		c.Kubectl = filepath.Join(home, ".cache/bridgetun/k8s-v1.34.4/kubectl")
		if _, err := os.Stat(c.Kubectl); err != nil {
			c.Kubectl = "kubectl"
		}
	}
	if c.binDir, err = os.MkdirTemp("", "bridgetun-e2e-bin-"); err != nil {
		return nil, err
	}
	if err := os.Chmod(c.binDir, 0o755); err != nil {
		return nil, err
	}
	c.Testapp = filepath.Join(c.binDir, "testapp")
	build := exec.Command("go", "build", "-o", c.Testapp, "./e2e/testapp")
	build.Dir, build.Env = c.Repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build testapp: %w\n%s", err, out)
	}
	return c, nil
}

// InWorkstation returns a command that runs as root inside the workstation namespace (ip netns exec: its own
// /etc/resolv.conf from /etc/netns/bt-ws/), with KUBECONFIG set to the admin kubeconfig.
func (c *Cluster) InWorkstation(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", WorkstationNS}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// InWorkstationAs returns a command that runs inside the workstation namespace as the unprivileged user name
// (normally User) with its groups, HOME, and KUBECONFIG set to UserKubeconfig.
func (c *Cluster) InWorkstationAs(ctx context.Context, name string, args ...string) *exec.Cmd {
	u, err := user.Lookup(name)
	if err != nil {
		// let the command fail visibly with the reason
		return exec.CommandContext(ctx, "sh", "-c", fmt.Sprintf("echo %q >&2; exit 1", "no user "+name+": "+err.Error()))
	}
	pre := []string{"netns", "exec", WorkstationNS, "setpriv", "--reuid", u.Uid, "--regid", u.Gid, "--init-groups", "--"}
	cmd := exec.CommandContext(ctx, "ip", append(pre, args...)...)
	cmd.Env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
		"HOME=" + u.HomeDir, "USER=" + name, "LOGNAME=" + name,
		"KUBECONFIG=" + c.UserKubeconfig,
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// KubectlCmd returns a kubectl command (on the host) against the cluster.
func (c *Cluster) KubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// RunKubectl runs kubectl on the host and returns its stdout; the error carries stderr.
func (c *Cluster) RunKubectl(ctx context.Context, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := c.KubectlCmd(ctx, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// ApplyManifest runs kubectl apply -f path (relative paths are from the repository root).
func (c *Cluster) ApplyManifest(ctx context.Context, path string) error {
	if !filepath.IsAbs(path) {
		path = filepath.Join(c.Repo, path)
	}
	_, err := c.RunKubectl(ctx, "apply", "-f", path)
	return err
}

// WaitRollout waits until Deployment ns/name has rolled out (all replicas updated and available).
func (c *Cluster) WaitRollout(ctx context.Context, ns, name string) error {
	timeout := "180s"
	if d, ok := ctx.Deadline(); ok {
		timeout = fmt.Sprintf("%ds", max(1, int(time.Until(d).Seconds())))
	}
	_, err := c.RunKubectl(ctx, "-n", ns, "rollout", "status", "deployment/"+name, "--timeout="+timeout)
	return err
}

// DeploySample applies e2e/testdata/sample-app.yaml and waits for all its Deployments.
func (c *Cluster) DeploySample(ctx context.Context) error {
	if err := c.ApplyManifest(ctx, "e2e/testdata/sample-app.yaml"); err != nil {
		return err
	}
	for _, d := range []string{"frontend", "api", "stats", "udp-echo", "sink"} {
		if err := c.WaitRollout(ctx, SampleNamespace, d); err != nil {
			return err
		}
	}
	return nil
}

// Eventually polls f every 200ms until it returns nil or timeout passes; it returns f's last error.
func Eventually(ctx context.Context, timeout time.Duration, f func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		err := f(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-t.C:
		}
	}
}
