// Package cluster is bridgetun's only client-go user: it loads kubeconfig
// the way kubectl does, checks RBAC up front, discovers the cluster's service
// and pod networks, installs the in-cluster gateway, and opens port-forward
// streams to it.
//
// Errors meant for a user are one line that names the thing that failed and
// a remedy. Everything takes kubernetes.Interface so that tests run against
// k8s.io/client-go/kubernetes/fake.
package cluster
