#!/bin/bash
# make cluster-down: stops what up.sh started (by PID file only), removes its iptables chains, pod and workstation
# namespaces, interfaces, mounts, cgroups, the guard table and the run state (PKI and the image/binary caches stay).
# Safe to run twice, and with nothing running.   KEEP_STATE=1 keeps $RUN (etcd data) for a faster restart.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || { echo "down.sh must run as root" >&2; exit 1; }
mkdir -p "$E2E_STATE"
if [ -z "${E2E_LOCKED:-}" ]; then exec 9>"$E2E_STATE/lock"; flock -w 120 9 || { echo "another up.sh/down.sh holds $E2E_STATE/lock" >&2; exit 1; }; fi
A=$CTR_ADDR
# stop NAME...: SIGTERM the recorded PIDs at once, wait up to 5s, then SIGKILL what is left
stop() { local n p pids=()
  for n in "$@"; do [ -f "$RUN/$n.pid" ] || continue; p=$(cat "$RUN/$n.pid"); rm -f "$RUN/$n.pid"
    if kill -0 "$p" 2>/dev/null; then kill "$p"; pids+=("$p"); echo "stopping $n (pid $p)"; fi; done
  for i in $(seq 1 50); do local alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1; done
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && kill -9 "$p"; done; return 0; }
# processes left inside the workstation namespace were started by e2e tests
if ip netns list 2>/dev/null | grep -qw "^$WS_NS"; then
  for p in $(ip netns pids "$WS_NS" 2>/dev/null); do echo "killing pid $p in netns $WS_NS"; kill -9 "$p" 2>/dev/null; done
fi
stop kubelet kube-proxy
if [ -S "$A" ] && pid_alive containerd; then
  for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 1
  for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1; done
  for c in $(ctr -a "$A" -n k8s.io containers ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io containers delete "$c" >/dev/null 2>&1; done
fi
stop kube-scheduler kube-controller-manager kube-apiserver containerd
stop etcd
if [ -x "$BIN/kube-proxy" ]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1; fi
# chains the kubelet creates itself (kube-proxy --cleanup leaves them)
for ipt in iptables ip6tables; do
  command -v $ipt >/dev/null || continue
  $ipt -D INPUT -j KUBE-FIREWALL 2>/dev/null; $ipt -D OUTPUT -j KUBE-FIREWALL 2>/dev/null
  $ipt -F KUBE-FIREWALL 2>/dev/null; $ipt -X KUBE-FIREWALL 2>/dev/null
  for t in filter nat mangle; do $ipt -t $t -F KUBE-KUBELET-CANARY 2>/dev/null; $ipt -t $t -X KUBE-KUBELET-CANARY 2>/dev/null
    $ipt -t $t -X KUBE-IPTABLES-HINT 2>/dev/null; done
done
# pod network namespaces (containerd's CNI) and the workstation
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns"; done
ip link del cni0 2>/dev/null
ip netns delete "$WS_NS" 2>/dev/null && echo "deleted netns $WS_NS"
ip link del "$WS_HOST_IF" 2>/dev/null
rm -rf "/etc/netns/$WS_NS"
# mounts under our run dir (kubelet volumes, overlay rootfs, shm, netns)
grep -o " $RUN[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
# cgroups created by kubelet/containerd
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  for top in kubepods kubepods.slice k8s.io; do
    [ -d "$h$top" ] && find "$h$top" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
done
# guard table and lab0 go last: nothing of ours is running any more
nft delete table inet "$GUARD_TABLE" 2>/dev/null && echo "deleted nft table inet $GUARD_TABLE"
ip link del lab0 2>/dev/null
[ -f "$RUN/sysctl.orig" ] && sysctl -qw net.ipv4.ip_forward="$(cat "$RUN/sysctl.orig")"
if [ "${KEEP_STATE:-0}" != 1 ] && [ -d "$RUN" ]; then
  find "$RUN" -mindepth 1 -maxdepth 1 ! -name pki -exec rm -rf {} + 2>/dev/null
  leftover=$(find "$RUN" -mindepth 1 -maxdepth 1 ! -name pki)
  [ -n "$leftover" ] && echo "WARNING: could not remove: $leftover"
fi
echo "e2e cluster down"
