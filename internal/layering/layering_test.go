// Package layering holds the test that keeps dependencies pointing inward
// (STYLE rule 1): the data plane and the agent never pull in client-go. The
// agent binary (cmd/bridgetun-agent) is wiring: it gives the gateway a
// client-go restorer for expired intercepts, like cmd/bridgetun does for up.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

func TestNoKubernetesBelowCluster(t *testing.T) {
	for _, pkg := range []string{"tunnel", "netstack", "dnsproxy", "agent", "agent/sidecar", "agent/iptables", "client"} {
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
