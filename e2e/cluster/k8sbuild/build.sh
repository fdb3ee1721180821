#!/bin/bash
# Builds the Kubernetes binaries (and a matching kubectl) from the Go module proxy into $OUT.
set -euo pipefail
cd "$(dirname "$0")"
export GOFLAGS=${GOFLAGS:--buildvcs=false}
V=$(awk '/^require k8s.io\/kubernetes/{print $3}' go.mod)
MAJ=1; MIN=$(echo "$V" | cut -d. -f2)
OUT=${OUT:?OUT must be set}
mkdir -p "$OUT"
LD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LD="$LD -X $p.gitVersion=$V -X $p.gitMajor=$MAJ -X $p.gitMinor=$MIN -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
export CGO_ENABLED=${CGO_ENABLED:-0}
for b in ${BINS:-kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl}; do
  s=$(date +%s)
  # build to a temp name, then rename: an interrupted build never leaves a half binary that looks cached
  go build -ldflags "$LD" -o "$OUT/.$b.tmp" k8s.io/kubernetes/cmd/$b
  mv -f "$OUT/.$b.tmp" "$OUT/$b"
  echo "BUILT $b in $(( $(date +%s) - s ))s"
done
