// Package e2e holds bridgetun's end-to-end tests against a real single-node Kubernetes cluster and the harness
// that starts one (e2e/cluster/up.sh) or reuses a running one (BRIDGETUN_E2E_KUBECONFIG).
//
// The developer's workstation is the network namespace bt-ws: it reaches the node IP 10.88.0.1 (API server,
// NodePorts) and nothing else, so a test proves bridgetun made a pod or service reachable, never the host:
//
//	 bt-ws netns                          host = the Kubernetes node
//	┌───────────────────────┐            ┌──────────────────────────────────────────────┐
//	│ bt-ws-c 10.89.0.2/30  ├── veth ────┤ bt-ws-h 10.89.0.1/30                         │
//	│ route 10.88.0.1/32    │            │ lab0 10.88.0.1: apiserver :6443, NodePorts   │
//	│ resolv.conf: 10.89.0.1│            │ cni0 10.244.0.1/24 ── pods                   │
//	│ (nothing answers)     │            │ services 10.96.0.0/16 (kube-proxy, iptables) │
//	└───────────────────────┘            │ nft inet bridgetun_guard: from bt-ws-h only  │
//	                                     │ node IP (and DNAT'ed NodePorts) pass         │
//	                                     └──────────────────────────────────────────────┘
//
// Writing a test:
//
//	func TestSomething(t *testing.T) {
//		c := Start(t)                        // reuse or start the cluster (shared by the package)
//		c.DumpOnFailure(t, "bt-sample")      // pod logs, events, harness log tails if t fails
//		out, err := c.InWorkstationAs(ctx, User, c.Testapp, "get", "http://...").CombinedOutput()
//	}
//
// TestMain must call Main so a cluster this package started is torn down after the run.
package e2e
