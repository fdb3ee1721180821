#!/usr/bin/env bash
# Installs the Debian packages the unit and namespace tests need, only when missing,
# so `make test` works on a fresh machine. The cluster harness installs its own (e2e/cluster).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
command -v iptables-restore >/dev/null || need+=(iptables)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ping >/dev/null || need+=(iputils-ping)
command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
command -v wg >/dev/null || need+=(wireguard-tools) # `wg show` against the device's UAPI socket
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
go mod download
