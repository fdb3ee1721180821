// Package layering holds the test that keeps dependencies pointing inward
// (STYLE rule 1): the data plane and the agent never pull in client-go.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

func TestNoKubernetesBelowCluster(t *testing.T) {
	for _, pkg := range []string{"tunnel", "netstack", "dnsproxy", "agent", "client", "cmd/bridgetun-agent"} {
		out, err := exec.Command("go", "list", "-deps", "github.com/bridgetun/bridgetun/"+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "k8s.io/") || dep == "github.com/bridgetun/bridgetun/cluster" || dep == "github.com/bridgetun/bridgetun/session" {
				t.Errorf("%s depends on %s: only cluster/ (and what wires it: session, cmd/bridgetun, e2e) may use Kubernetes", pkg, dep)
				break
			}
		}
	}
}
