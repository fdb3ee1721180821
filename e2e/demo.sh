#!/bin/bash
# make demo: start the local real cluster (or reuse it), deploy the sample app
# frontend -> api -> stats, join the workstation namespace bt-ws to the cluster
# with `bridgetun up`, show cluster services answering from the workstation,
# then intercept the api Service to a server running on the workstation.
# The cluster stays up afterwards (make cluster-down removes it).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
. e2e/cluster/lib.sh
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
ws() { ip netns exec bt-ws "$@"; }
[ "$(id -u)" = 0 ] || { echo "demo: needs root (it starts a local Kubernetes cluster)" >&2; exit 1; }

say "starting the local cluster (first run builds Kubernetes v1.34.4 from source: ~5-25 min)"
e2e/cluster/up.sh
export KUBECONFIG=$RUN/pki/admin.kubeconfig
KUBECTL=${KUBECTL:-$HOME/.cache/bridgetun/k8s-v1.34.4/kubectl}
say "importing images and deploying the sample app"
e2e/cluster/images.sh >/dev/null
"$KUBECTL" apply -f e2e/testdata/sample-app.yaml >/dev/null
for d in frontend api stats udp-echo sink; do "$KUBECTL" -n bt-sample rollout status deploy/$d --timeout=180s >/dev/null; done
"$KUBECTL" -n bt-sample get svc
TESTAPP=$(mktemp -d)/testapp
CGO_ENABLED=0 go build -o "$TESTAPP" ./e2e/testapp
FRONTEND=$("$KUBECTL" -n bt-sample get svc frontend -o jsonpath='{.spec.clusterIP}')

say "the workstation (network namespace bt-ws) cannot reach the cluster yet"
if ws "$TESTAPP" dial -timeout 2s "$FRONTEND:80"; then echo "unexpected: reachable before up" >&2; exit 1; fi
echo "dial $FRONTEND:80 from bt-ws: unreachable, as it should be"

STATE=$(mktemp -d)
LOCAL_API=
cleanup() {
  [ -n "$LOCAL_API" ] && kill "$LOCAL_API" 2>/dev/null || true
  ws env BRIDGETUN_STATE_DIR="$STATE" "$REPO/bin/bridgetun" down >/dev/null 2>&1 || true
  rm -rf "$STATE" "$(dirname "$TESTAPP")"
}
trap cleanup EXIT
say "sudo bridgetun up   (from the workstation)"
ws env BRIDGETUN_STATE_DIR="$STATE" KUBECONFIG="$KUBECONFIG" "$REPO/bin/bridgetun" up --background --upgrade \
  -n bt-sample --gateway-image bridgetun.local/bridgetun-agent:dev
ws env BRIDGETUN_STATE_DIR="$STATE" "$REPO/bin/bridgetun" status --diagnostics
say "the workstation's /etc/resolv.conf now points cluster names at bridgetun (restored by down)"
ws cat /etc/resolv.conf

say "a cluster service answering by name from the workstation: GET http://frontend/"
ws "$TESTAPP" get http://frontend/
say "by its full name, with the route-as header propagated frontend -> api -> stats"
ws "$TESTAPP" get -H "kubernetes-route-as: demo" http://frontend.bt-sample.svc.cluster.local/ | grep -E '"(service|instance|route_as)"' | head -9
say "UDP through the tunnel: udp-echo.bt-sample:5353"
ws "$TESTAPP" udp -timeout 3s "$(ws getent ahostsv4 udp-echo | awk 'NR==1{print $1}')":5353 hello-from-the-workstation
say "intercept: a local api server on the workstation (127.0.0.1:18090) takes the api Service's traffic"
ip netns exec bt-ws env SERVICE_NAME=api-on-my-laptop DOWNSTREAM_URL="http://stats.bt-sample/" "$TESTAPP" http -listen 127.0.0.1:18090 >"$STATE/local-api.log" 2>&1 &
LOCAL_API=$!  # ip netns exec execs the program: this is the server's own pid
for _ in $(seq 50); do ws "$TESTAPP" get -timeout 1s http://127.0.0.1:18090/healthz >/dev/null 2>&1 && break; sleep 0.1; done
ws env BRIDGETUN_STATE_DIR="$STATE" "$REPO/bin/bridgetun" intercept api --port 18090 --detach --env-file "$STATE/api.env" --mount "$STATE/volumes"
echo "the pod's environment (ConfigMap/Secret references resolved), as written to --env-file:"
grep -E '^(GREETING|API_TOKEN|DOWNSTREAM_URL|POD_NAME)=' "$STATE/api.env"
echo "its ConfigMap volume, mirrored with the kubelet's layout:"
ls -la "$STATE/volumes/etc/api"
say "GET http://frontend/ -> frontend (cluster) -> api (THIS workstation) -> stats (cluster)"
ws "$TESTAPP" get http://frontend/ | grep -E '"(service|instance)"'
say "bridgetun leave api   (the Deployment gets its original pod template back)"
ws env BRIDGETUN_STATE_DIR="$STATE" "$REPO/bin/bridgetun" leave api
ws "$TESTAPP" get http://frontend/ | grep -E '"(service|instance)"'
kill "$LOCAL_API" 2>/dev/null || true

say "bridgetun down"
ws env BRIDGETUN_STATE_DIR="$STATE" "$REPO/bin/bridgetun" down
echo
echo "demo done; the cluster keeps running: export KUBECONFIG=$KUBECONFIG   (make cluster-down to stop it)"
