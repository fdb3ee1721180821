#!/bin/bash
# devshell: be the lab's developer. Runs a shell (or COMMAND) as the unprivileged user bridgetun-e2e inside the
# workstation namespace bt-ws, the way a developer sits at their laptop: bridgetun on PATH (/usr/local/bin),
# sudo allowed for bridgetun only (Debian's default env_reset: sudo drops KUBECONFIG, XDG_*, TMPDIR), their
# kubeconfig in ~/.kube/config, the repository as the working directory, no KUBECONFIG set. It is how README's
# "Using it" block is tried verbatim after `make demo`. What it set up is removed when the shell exits.
#   usage: sudo e2e/cluster/devshell.sh [COMMAND ARGS...]        (default: an interactive bash)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
die() { echo "devshell: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (it enters the workstation namespace): sudo $0"
[ -x "$REPO/bin/bridgetun" ] || die "$REPO/bin/bridgetun missing: run make build"
command -v sudo >/dev/null || die "sudo is not installed: run e2e/cluster/up.sh (01-install.sh installs it)"
ip netns exec "$WS_NS" true 2>/dev/null || die "workstation namespace $WS_NS missing: run make demo (or e2e/cluster/up.sh)"
[ -f "$RUN/user/kubeconfig" ] || die "$RUN/user/kubeconfig missing: run e2e/cluster/up.sh"
id "$E2E_USER" >/dev/null 2>&1 || die "no user $E2E_USER: run e2e/cluster/up.sh"
uid=$(id -u "$E2E_USER") gid=$(id -g "$E2E_USER")

BT=/usr/local/bin/bridgetun
RULE=/etc/sudoers.d/bridgetun-devshell
KDIR=$E2E_USER_HOME/.kube
undo=()
cleanup() {
  local i
  for ((i = ${#undo[@]} - 1; i >= 0; i--)); do eval "${undo[$i]}" || true; done
}
trap cleanup EXIT

if [ -e "$BT" ] && ! cmp -s "$BT" "$REPO/bin/bridgetun"; then
  die "$BT exists and is not this build: remove it first (devshell installs bin/bridgetun there for the session)"
fi
if [ ! -e "$BT" ]; then
  install -m 0755 "$REPO/bin/bridgetun" "$BT"
  undo+=("rm -f '$BT'")
fi

tmp=$(mktemp)
printf '# e2e/cluster/devshell.sh: %s may run bridgetun as root, nothing else.\n%s ALL=(root) NOPASSWD: %s\n' "$E2E_USER" "$E2E_USER" "$BT" > "$tmp"
visudo -cqf "$tmp" || { rm -f "$tmp"; die "the sudoers rule does not validate"; }
chmod 0440 "$tmp"
mv "$tmp" "$RULE"
undo+=("rm -f '$RULE'")

if [ ! -e "$KDIR/config" ]; then
  install -d -m 0700 -o "$uid" -g "$gid" "$KDIR"
  install -m 0600 -o "$uid" -g "$gid" "$RUN/user/kubeconfig" "$KDIR/config"
  undo+=("rm -f '$KDIR/config'; rmdir '$KDIR' 2>/dev/null")
fi

[ $# -gt 0 ] || set -- bash --norc -i
echo "devshell: $E2E_USER in $WS_NS (sudo for $BT only, kubeconfig ~/.kube/config); exit to leave" >&2
rc=0
ip netns exec "$WS_NS" setpriv --reuid "$uid" --regid "$gid" --init-groups -- \
  env -i HOME="$E2E_USER_HOME" USER="$E2E_USER" LOGNAME="$E2E_USER" TERM="${TERM:-dumb}" PS1='developer@bt-ws$ ' \
  PATH=/usr/local/bin:/usr/local/go/bin:/usr/bin:/bin \
  sh -c 'cd "$1" && shift && exec "$@"' devshell "$REPO" "$@" || rc=$?
exit $rc
