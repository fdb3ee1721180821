# Sourced by the e2e cluster scripts: one place for paths, addresses and the step runner.
# shellcheck shell=bash
E2E_CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_CLUSTER_DIR/../.." && pwd)
E2E_STATE=${E2E_STATE:-/var/tmp/bridgetun-e2e}
export REPO E2E_STATE
export RUN=${RUN:-$E2E_STATE/run} LOGS=${LOGS:-$E2E_STATE/logs} IMAGES=${IMAGES:-$E2E_STATE/images}
export PKI=${PKI:-$RUN/pki}
export K8S_VERSION=${K8S_VERSION:-1.34.4} COREDNS_VERSION=${COREDNS_VERSION:-v1.14.7}
# binary cache outside the repository, reused while the version matches
CACHE_HOME=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}
export BIN=${BIN:-$CACHE_HOME/bridgetun/k8s-v$K8S_VERSION}
export NODE_IP=10.88.0.1 NODE_NAME=${NODE_NAME:-bt-node}
export SERVICE_CIDR=10.96.0.0/16 SVC_IP=10.96.0.1 DNS_IP=10.96.0.10
export POD_CIDR=10.244.0.0/24 CLUSTER_CIDR=10.244.0.0/16
# the workstation: a network namespace that reaches only the node IP (see 06-workstation.sh)
export WS_NS=bt-ws WS_HOST_IF=bt-ws-h WS_IF=bt-ws-c WS_HOST_IP=10.89.0.1 WS_IP=10.89.0.2 WS_NET=10.89.0.0/30
export E2E_USER=bridgetun-e2e E2E_USER_HOME=/var/lib/bridgetun-e2e
export GUARD_TABLE=bridgetun_guard
export IMAGE_PREFIX=bridgetun.local
export GOFLAGS=${GOFLAGS:--buildvcs=false}
export CTR_ADDR=$RUN/containerd/containerd.sock
export KUBECONFIG=$PKI/admin.kubeconfig
if [ -x "$BIN/kubectl" ]; then KUBECTL=$BIN/kubectl; else KUBECTL=$(command -v kubectl || echo kubectl); fi
export KUBECTL
# components in start order; each has $RUN/<name>.pid while it runs
COMPONENTS="etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"

kc() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# step NAME CMD...: runs CMD with its output in $LOGS/step-NAME.log, prints "STEP NAME <secs>s".
# On failure: the step name, exit code and the last 30 lines of its log, then exit 1.
step() {
  local n=$1; shift
  local s log=$LOGS/step-$n.log rc=0
  s=$(now)
  mkdir -p "$LOGS"
  echo "=== $(date -Is) $*" >> "$log"
  "$@" >> "$log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    echo "STEP $n FAILED after $(since "$s")s (exit $rc); last 30 lines of $log:" >&2
    tail -n 30 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
  echo "STEP $n $(since "$s")s"
}

pid_alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# start NAME ARGS...: runs $BIN/NAME (or NAME from PATH) in the background, PID in $RUN/NAME.pid
start() {
  local n=$1 b; shift
  if [ -x "$BIN/$n" ]; then b=$BIN/$n; else b=$(command -v "$n"); fi
  # 9>&-: daemons must not inherit up.sh's lock fd (flock would stay held)
  nohup "$b" "$@" > "$LOGS/$n.log" 2>&1 9>&- &
  echo $! > "$RUN/$n.pid"
}
