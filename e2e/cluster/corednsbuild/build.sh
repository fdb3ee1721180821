#!/bin/bash
# Builds CoreDNS from the Go module proxy into $OUT/coredns (version pinned in go.mod).
set -euo pipefail
cd "$(dirname "$0")"
export GOFLAGS=${GOFLAGS:--buildvcs=false}
OUT=${OUT:?OUT must be set}
mkdir -p "$OUT"
s=$(date +%s)
CGO_ENABLED=0 go build -ldflags "-s -w" -o "$OUT/.coredns.tmp" github.com/coredns/coredns
mv -f "$OUT/.coredns.tmp" "$OUT/coredns"
echo "BUILT coredns in $(( $(date +%s) - s ))s"
