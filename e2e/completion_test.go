package e2e

// The kubectl plugin on the real cluster (issue 15.2): bin/kubectl-bridgetun
// completes SERVICE, -n and --context from the cluster and the kubeconfig,
// and kubectl itself runs the plugin and its completion helper
// (kubectl_complete-bridgetun) from PATH.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/bridgetun/bridgetun/cluster"
)

func TestCompletion(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.Repo, "bin")
	// No session of this test's: BRIDGETUN_STATE_DIR is empty, so the
	// namespace comes from -n.
	env := append(os.Environ(), "BRIDGETUN_STATE_DIR="+t.TempDir(), "KUBECONFIG="+c.Kubeconfig,
		"PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	svcs, err := c.Client.CoreV1().Services(SampleNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wantSvcs []string
	for _, s := range svcs.Items {
		if s.Labels[cluster.LabelName] != cluster.GatewayName {
			wantSvcs = append(wantSvcs, s.Name)
		}
	}
	slices.Sort(wantSvcs)
	for _, must := range []string{"api", "frontend", "stats", "sink", "udp-echo"} {
		if !slices.Contains(wantSvcs, must) {
			t.Fatalf("sample app: no Service %s in %v", must, wantSvcs)
		}
	}

	plugin := filepath.Join(bin, "kubectl-bridgetun")
	out := run(plugin, "__complete", "intercept", "--kubeconfig", c.Kubeconfig, "-n", SampleNamespace, "")
	t.Logf("kubectl-bridgetun __complete intercept -n %s '':\n%s", SampleNamespace, out)
	if diff := cmp.Diff(wantSvcs, candidates(t, out, ":4")); diff != "" {
		t.Errorf("intercept SERVICE (-want +got):\n%s", diff)
	}
	if !strings.Contains(out, "api\t80/TCP (http)\n") {
		t.Errorf("intercept SERVICE: no description of api's port in\n%s", out)
	}
	out = run(plugin, "__complete", "run", "-n", SampleNamespace, "--service", "st")
	if diff := cmp.Diff([]string{"stats", "stats-headless"}, candidates(t, out, ":4")); diff != "" {
		t.Errorf("run --service st (-want +got):\n%s", diff)
	}
	out = run(plugin, "__complete", "up", "-n", "bt-")
	if got := candidates(t, out, ":4"); !slices.Contains(got, SampleNamespace) {
		t.Errorf("up -n bt-: got %v, want %s among them", got, SampleNamespace)
	}
	raw, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	var wantContexts []string
	for name := range raw.Contexts {
		wantContexts = append(wantContexts, name)
	}
	slices.Sort(wantContexts)
	out = run(plugin, "__complete", "intercept", "--context", "")
	if diff := cmp.Diff(wantContexts, candidates(t, out, ":4")); diff != "" {
		t.Errorf("--context (-want +got):\n%s", diff)
	}

	// Through kubectl: it finds kubectl-bridgetun on PATH and, for
	// completion, kubectl_complete-bridgetun.
	out = run(c.Kubectl, "bridgetun", "--help")
	if !strings.Contains(out, "Usage:\n  kubectl bridgetun [command]") || !strings.Contains(out, `Use "kubectl bridgetun [command] --help"`) {
		t.Errorf("kubectl bridgetun --help does not name kubectl bridgetun:\n%s", out)
	}
	out = run(c.Kubectl, "bridgetun", "up", "--help")
	if !strings.Contains(out, "\n  sudo kubectl bridgetun up -n my-app\n") || !strings.Contains(out, "`kubectl bridgetun status` shows it") {
		t.Errorf("kubectl bridgetun up --help: examples and text do not name kubectl bridgetun:\n%s", out)
	}
	out = run(c.Kubectl, "__complete", "bridgetun", "intercept", "-n", SampleNamespace, "")
	t.Logf("kubectl __complete bridgetun intercept -n %s '':\n%s", SampleNamespace, out)
	if diff := cmp.Diff(wantSvcs, candidates(t, out, ":4")); diff != "" {
		t.Errorf("kubectl bridgetun intercept SERVICE (-want +got):\n%s", diff)
	}
}

// candidates are the names of cobra __complete output (descriptions cut
// off), which must end with the directive line want.
func candidates(t *testing.T, out, want string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if lines[len(lines)-1] != want {
		t.Errorf("directive: got %q, want %q (output %q)", lines[len(lines)-1], want, out)
	}
	var names []string
	for _, l := range lines[:len(lines)-1] {
		name, _, _ := strings.Cut(l, "\t")
		names = append(names, name)
	}
	return names
}
