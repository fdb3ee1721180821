#!/bin/bash
# Generates go.mod for a wrapper module that builds Kubernetes binaries from the Go module proxy.
# usage: gen-gomod.sh 1.34.4
set -euo pipefail
V=${1:-1.34.4}
MINOR=$(echo "$V" | cut -d. -f2)
cd "$(dirname "$0")"
go mod download -json k8s.io/kubernetes@v$V >/dev/null
KMOD=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$V.mod
{
  echo "module bridgetun.local/k8sbuild"
  echo
  grep -m1 -E '^go [0-9]' "$KMOD"          # same go directive as k8s.io/kubernetes
  echo
  grep -m1 -E '^godebug ' "$KMOD" || true  # k8s builds with an older GODEBUG default
  echo
  echo "require k8s.io/kubernetes v$V"
  echo
  echo "replace ("
  grep -E '^\s+k8s.io/[a-z0-9-]+ => ./staging/' "$KMOD" | awk -v v="v0.$MINOR.${V##*.}" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod
cat > tools.go <<'EOT'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOT
go mod tidy
