// Package cluster is bridgetun's only client-go user: it loads kubeconfig,
// checks RBAC, discovers the cluster's networks, installs the in-cluster
// gateway and opens port-forward streams to it.
package cluster

import (
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/kubernetes/fake"
	_ "k8s.io/client-go/tools/clientcmd"
	_ "k8s.io/client-go/tools/portforward"
	_ "k8s.io/client-go/transport/spdy"
	_ "sigs.k8s.io/yaml"
)
