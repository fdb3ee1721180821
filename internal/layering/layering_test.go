// Package layering holds the test that keeps dependencies pointing inward
// (STYLE rule 1, docs/ARCHITECTURE.md's package table). Every package of the
// module must match a row of the table below; a package that matches none
// fails the test, so a new package has to be placed in the table (and the
// document) before it lands.
package layering

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/bridgetun/bridgetun"

const (
	kubernetes = "k8s.io/"
	gvisor     = "gvisor.dev/"
)

// rule is one row of the package table: what a package (or every package
// under a prefix ending in "/...") must not depend on, transitively, and
// what it may import directly (nil: anything not forbidden).
type rule struct {
	pkg      string
	job      string
	notDeps  []string // forbidden among all dependencies: "x/" a whole tree, else one package
	onlyStd  bool     // direct imports: the standard library only
	directK8 []string // when set: the only k8s.io packages it may import directly
}

var table = []rule{
	{pkg: "cmd/...", job: "flags, wiring, exit codes"},
	{pkg: "devflow", job: "the intercept and run workflows over a session", notDeps: []string{gvisor}},
	{pkg: "devflow/vscode", job: "VS Code tasks and launch configuration around an intercept", notDeps: []string{kubernetes, gvisor, module + "/session", module + "/cluster", module + "/devflow"}},
	{pkg: "doctor", job: "read-only checks of a session, routes and DNS on this machine", notDeps: []string{gvisor, module + "/agent", module + "/netstack"}},
	{pkg: "tunnel", job: "WireGuard device, binds, framing, keys", notDeps: []string{kubernetes, gvisor, module + "/netstack", module + "/cluster"}},
	{pkg: "netstack", job: "gVisor stacks: gateway forwarder, client stack, link endpoint", notDeps: []string{kubernetes, module + "/cluster"}},
	{pkg: "proxy", job: "SOCKS5 and HTTP proxies over a dialer", notDeps: []string{kubernetes, gvisor}},
	{pkg: "dnsproxy/...", job: "split resolver and OS configurators", notDeps: []string{kubernetes, gvisor}},
	{pkg: "agent/api", job: "control-API wire types, routes, header names", onlyStd: true},
	{pkg: "agent", job: "gateway server, control API, relay, leases", notDeps: []string{kubernetes, module + "/cluster", module + "/session"}},
	{pkg: "agent/sidecar", job: "intercept sidecar and isolation router", notDeps: []string{kubernetes, gvisor, module + "/agent", module + "/netstack"}},
	{pkg: "agent/iptables", job: "the sidecar's nat rules", notDeps: []string{kubernetes, gvisor}},
	{pkg: "client", job: "workstation end of the tunnel, forwards", notDeps: []string{kubernetes, gvisor, module + "/netstack"}},
	{pkg: "client/...", job: "workstation end of the tunnel: adapters", notDeps: []string{kubernetes}},
	{pkg: "session", job: "the up session's components", notDeps: []string{gvisor, module + "/agent", module + "/netstack"},
		directK8: []string{"k8s.io/api/", "k8s.io/apimachinery/", "k8s.io/client-go/kubernetes"}},
	{pkg: "cluster", job: "client-go: kubeconfig, discovery, install, port-forward, workloads", notDeps: []string{gvisor, module + "/session", module + "/agent", module + "/netstack"}},
	{pkg: "internal/...", job: "test kit, splice relay, metrics helpers, connection caps, namespace topologies", notDeps: []string{kubernetes, module + "/cluster", module + "/session"}},
	{pkg: "e2e/...", job: "real-cluster tests and harness"},
	{pkg: "bench/...", job: "benchmarks"},
}

// ruleFor returns the most specific row for pkg (relative to the module).
func ruleFor(pkg string) (rule, bool) {
	for _, r := range table {
		if r.pkg == pkg {
			return r, true
		}
	}
	for _, r := range table {
		if prefix, ok := strings.CutSuffix(r.pkg, "/..."); ok && (pkg == prefix || strings.HasPrefix(pkg, prefix+"/")) {
			return r, true
		}
	}
	return rule{}, false
}

type pkgInfo struct {
	path          string
	imports, deps []string
}

// listPackages asks the go tool for every package of the module with its
// direct imports and all dependencies (tests excluded: they may use fakes).
func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}|{{join .Deps \" \"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkgInfo
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 3 {
			t.Fatalf("go list: odd line %q", line)
		}
		pkgs = append(pkgs, pkgInfo{path: f[0], imports: strings.Fields(f[1]), deps: strings.Fields(f[2])})
	}
	return pkgs
}

func TestLayering(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages: the module is bigger than that", len(pkgs))
	}
	for _, p := range pkgs {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.path, module), "/")
		r, ok := ruleFor(rel)
		if !ok {
			t.Errorf("%s: no row in the package table: add it to internal/layering and docs/ARCHITECTURE.md", rel)
			continue
		}
		for _, bad := range r.notDeps {
			for _, dep := range p.deps {
				if forbids(bad, dep) {
					t.Errorf("%s (%s) depends on %s: the table forbids %s", rel, r.job, dep, bad)
					break // one example per rule is enough
				}
			}
		}
		for _, imp := range p.imports {
			if r.onlyStd && strings.Contains(strings.Split(imp, "/")[0], ".") {
				t.Errorf("%s (%s) imports %s: it may import the standard library only", rel, r.job, imp)
			}
			if r.directK8 != nil && strings.HasPrefix(imp, kubernetes) && !hasAnyPrefix(imp, r.directK8) {
				t.Errorf("%s (%s) imports %s directly: it reaches Kubernetes through cluster/ (only %v here)", rel, r.job, imp, r.directK8)
			}
		}
	}
}

// forbids: a rule ending in "/" forbids everything under it; one naming a
// package of ours forbids that package only (agent, not agent/api).
func forbids(rule, dep string) bool {
	if strings.HasSuffix(rule, "/") {
		return strings.HasPrefix(dep, rule)
	}
	return dep == rule
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if s == p || strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// TestRuleFor pins the table lookup: exact rows win over prefix rows.
func TestRuleFor(t *testing.T) {
	for pkg, want := range map[string]string{
		"agent/sidecar": "agent/sidecar", "agent": "agent", "dnsproxy/dnsbench": "dnsproxy/...",
		"internal/splice": "internal/...", "cmd/bridgetun": "cmd/...", "client": "client",
	} {
		r, ok := ruleFor(pkg)
		if !ok || r.pkg != want {
			t.Errorf("ruleFor(%q): got %q, %v; want %q", pkg, r.pkg, ok, want)
		}
	}
	if _, ok := ruleFor("newpkg"); ok {
		t.Error("ruleFor(newpkg): got a row, want none (new packages must be placed)")
	}
}
