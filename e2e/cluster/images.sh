#!/bin/bash
# Builds the e2e images with go-containerregistry (e2e/cmd/mkimage + e2e/images/*.files) and imports them into the
# cluster's containerd (namespace k8s.io). No Docker, no registry.
#   images.sh        agent (from bin/bridgetun-agent; `make build` first) + testapp  — `make images`
#   images.sh base   pause + CoreDNS (called by up.sh's containerd step)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
MODE=${1:-app}
mkdir -p "$IMAGES/bin" "$LOGS"
cd "$REPO"
if ! ctr -a "$CTR_ADDR" version >/dev/null 2>&1; then
  echo "images: containerd of the e2e cluster is not running ($CTR_ADDR): run make cluster-up first" >&2; exit 1
fi
tools() {
  CGO_ENABLED=0 go build -ldflags "-s -w" -o "$IMAGES/bin/mkimage" ./e2e/cmd/mkimage
  CGO_ENABLED=0 go build -ldflags "-s -w" -o "$IMAGES/bin/testapp" ./e2e/testapp
}
image() { # image NAME: build from e2e/images/NAME.files and import
  local n=$1
  "$IMAGES/bin/mkimage" -spec "e2e/images/$n.files" -o "$IMAGES/$n.tar"
  ctr -a "$CTR_ADDR" -n k8s.io images import "$IMAGES/$n.tar"
}
step image-tools tools
case $MODE in
  base) step image-pause image pause; step image-coredns image coredns ;;
  app)
    if [ ! -x "$REPO/bin/bridgetun-agent" ]; then
      echo "STEP image-agent FAILED: $REPO/bin/bridgetun-agent missing: run make build (or make images)" >&2; exit 1
    fi
    step image-agent image agent; step image-testapp image testapp ;;
  *) echo "usage: images.sh [app|base]" >&2; exit 2 ;;
esac
ctr -a "$CTR_ADDR" -n k8s.io images ls -q | grep "^$IMAGE_PREFIX/"
