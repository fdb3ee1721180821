#!/bin/bash
# The developer's machine: network namespace bt-ws that reaches the node IP (API server, NodePorts) and nothing else.
#
#   bt-ws netns                      host (the node)
#   bt-ws-c 10.89.0.2/30 ── veth ── bt-ws-h 10.89.0.1/30      lab0 10.88.0.1 (apiserver :6443, NodePorts)
#   routes: 10.89.0.0/30 (connected), 10.88.0.1/32 via 10.89.0.1 — no pod (10.244/16) or service (10.96/16) route;
#   the host's guard table drops those even if a route is added inside bt-ws.
#   /etc/netns/bt-ws/resolv.conf: nameserver 10.89.0.1 — nothing listens there (lookups fail fast with
#   "connection refused"); DNS tests replace it (ip netns exec bind-mounts it over /etc/resolv.conf).
# Also: system user bridgetun-e2e (unprivileged test runs) with its own kubeconfig copy.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ip netns list | grep -qw "^$WS_NS" || ip netns add "$WS_NS"
if ! ip link show "$WS_HOST_IF" >/dev/null 2>&1; then
  ip -n "$WS_NS" link del "$WS_IF" 2>/dev/null || true
  ip link add "$WS_HOST_IF" type veth peer name "$WS_IF" netns "$WS_NS"
fi
ip addr replace "$WS_HOST_IP/30" dev "$WS_HOST_IF"
ip link set "$WS_HOST_IF" up
ip -n "$WS_NS" link set lo up
ip -n "$WS_NS" addr replace "$WS_IP/30" dev "$WS_IF"
ip -n "$WS_NS" link set "$WS_IF" up
ip -n "$WS_NS" route replace "$NODE_IP/32" via "$WS_HOST_IP"
mkdir -p "/etc/netns/$WS_NS"
[ -f "/etc/netns/$WS_NS/resolv.conf" ] || cat > "/etc/netns/$WS_NS/resolv.conf" <<EOT
# bridgetun e2e workstation: nothing listens on $WS_HOST_IP:53, so lookups fail until a test points this at bridgetun.
nameserver $WS_HOST_IP
options timeout:1 attempts:1
EOT
id "$E2E_USER" >/dev/null 2>&1 || useradd --system --create-home --home-dir "$E2E_USER_HOME" --shell /usr/sbin/nologin "$E2E_USER"
mkdir -p "$E2E_USER_HOME"; chown "$E2E_USER:" "$E2E_USER_HOME"
ip netns exec "$WS_NS" ip route
