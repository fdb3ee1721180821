#!/bin/bash
# make e2e: start (or reuse) the e2e cluster, build+import the images, run the e2e suite, and tear the cluster
# down only if this run started it (BRIDGETUN_E2E_KEEP=1 keeps it). Any failure names its step, prints the log
# tails and exits non-zero: nothing is skipped silently.
#   usage: e2e/run.sh [go-test-timeout]      (default 45m)
set -euo pipefail
TIMEOUT=${1:-45m}
. "$(dirname "$0")/cluster/lib.sh"
C=$E2E_CLUSTER_DIR
[ "$(id -u)" = 0 ] || { echo "STEP preflight FAILED: e2e needs root (network namespaces, containerd, kubelet)" >&2; exit 1; }
T0=$(now)
tails() {
  local f
  for f in "$LOGS"/kube-apiserver.log "$LOGS"/kubelet.log "$LOGS"/containerd.log "$LOGS"/kube-proxy.log; do
    [ -f "$f" ] && { echo "--- last 15 lines of $f"; tail -n 15 "$f"; }
  done
}
fail() { echo "STEP $1 FAILED after $(since "$2")s" >&2; tails >&2; exit 1; }

started=0
if [ -n "${BRIDGETUN_E2E_KUBECONFIG:-}" ]; then
  echo "e2e: using the cluster of BRIDGETUN_E2E_KUBECONFIG=$BRIDGETUN_E2E_KUBECONFIG"
else
  if "$C/up.sh" --check; then echo "e2e: reusing the running e2e cluster"; else started=1; fi
  s=$(now)
  "$C/up.sh" || fail cluster-up "$s"
  echo "STEP cluster-up $(since "$s")s"
  export BRIDGETUN_E2E_KUBECONFIG=$KUBECONFIG
fi
down() {
  local rc=$?
  if [ "$started" = 1 ] && [ -z "${BRIDGETUN_E2E_KEEP:-}" ]; then
    local s; s=$(now)
    "$C/down.sh" > "$LOGS/step-cluster-down.log" 2>&1 || { echo "STEP cluster-down FAILED"; tail -n 30 "$LOGS/step-cluster-down.log"; rc=1; }
    echo "STEP cluster-down $(since "$s")s"
  elif [ "$started" = 1 ]; then
    echo "e2e: cluster kept (BRIDGETUN_E2E_KEEP): export KUBECONFIG=$KUBECONFIG"
  fi
  echo "e2e: total $(since "$T0")s, exit $rc"
  exit $rc
}
trap down EXIT
s=$(now)
"$C/images.sh" || fail images "$s"
echo "STEP images $(since "$s")s"
s=$(now)
cd "$REPO"
export KUBECTL
if ! go test -count=1 -timeout "$TIMEOUT" ${E2E_GOTEST_FLAGS:-} ./e2e/...; then
  fail e2e-tests "$s"
fi
echo "STEP e2e-tests $(since "$s")s"
