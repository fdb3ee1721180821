# bridgetun — see README.md. Every target installs what it needs.
GO        ?= go
BIN       ?= bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/bridgetun/bridgetun/internal/version.Version=$(VERSION)
GOTEST    ?= $(GO) test
E2E_TIMEOUT ?= 45m

# kubectl as built for the e2e cluster (fresh machines have no other).
KUBECTL ?= $(HOME)/.cache/bridgetun/k8s-v1.34.4/kubectl

.PHONY: all build deps test fuzz e2e ci bench bench-dataplane bench-scale bench-cluster bench-headless bench-dns lint cluster-up cluster-down images demo clean

all: build

deps:
	@hack/deps.sh

# kubectl-bridgetun is the same binary as a kubectl plugin (`kubectl
# bridgetun …`; help and hints then say so), kubectl_complete-bridgetun the
# helper kubectl ≥ 1.26 runs to complete its arguments.
build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/bridgetun ./cmd/bridgetun-agent
	ln -f $(BIN)/bridgetun $(BIN)/kubectl-bridgetun
	ln -f $(BIN)/bridgetun $(BIN)/kubectl_complete-bridgetun

# Unit and namespace tests, under the race detector. Namespace tests need
# root; with CI set (.ci/run sets it) a root-only test fails instead of skipping.
# The patched wireguard-go (third_party/wireguard-go/BRIDGETUN.md) is tested
# with the patch's packages, built against our module's dependencies.
# Upstream disables TestWaitPool (the bounded pool, which it and we
# leave unused), so it is not run.
WIREGUARD_PATCHED = golang.zx2c4.com/wireguard/device golang.zx2c4.com/wireguard/conn

test: deps
	$(GOTEST) -race -count=1 -timeout 30m -skip '^TestWaitPool$$' $$($(GO) list ./... | grep -v /e2e) $(WIREGUARD_PATCHED)

# Every parser's fuzz target, a short run each (FUZZTIME) on top of its
# committed corpus (testdata/fuzz/FuzzXxx): `-fuzz` takes one package and
# one target at a time, so they run one after the other.
# A count, not a duration: a duration -fuzztime races Go 1.26's fuzz
# coordinator at its deadline and fails with a bare "context deadline
# exceeded" and no crasher (go.dev/issue/75804, fixed in Go 1.27).
FUZZTIME ?= 4000x
FUZZ_TARGETS = \
	./agent:FuzzControl \
	./agent:FuzzRelay \
	./agent/sidecar:FuzzSniff \
	./agent/sidecar:FuzzIsolationRouter \
	./proxy:FuzzSOCKS \
	./proxy:FuzzSOCKSUDPDatagram \
	./proxy:FuzzHTTPProxy \
	./session:FuzzAPI \
	./devflow:FuzzProjectConfig

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

STATICCHECK_VERSION ?= v0.8.2

# staticcheck comes through the Go module proxy into bin/ (gitignored).
$(BIN)/staticcheck-$(STATICCHECK_VERSION):
	GOBIN=$(CURDIR)/$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

# The client binary also builds for macOS and Windows (netstack mode; TUN
# mode there is an ErrUnsupported error for now); the agent binary runs in
# Linux containers but is cross-built too, so its OS seams stay honest. go vet checks the client's
# packages (and their tests) for both.
CLIENT_PKGS = $$(GOOS=darwin $(GO) list -deps ./cmd/bridgetun | grep '^github.com/bridgetun/bridgetun')

lint: $(BIN)/staticcheck-$(STATICCHECK_VERSION)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/bridgetun ./cmd/bridgetun-agent
	GOOS=windows GOARCH=amd64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/bridgetun ./cmd/bridgetun-agent
	GOOS=darwin GOARCH=arm64 $(GO) vet $(CLIENT_PKGS)
	GOOS=windows GOARCH=amd64 $(GO) vet $(CLIENT_PKGS)

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

images: build
	e2e/cluster/images.sh

# e2e: start (or reuse) the real cluster, run the suite, tear down what it started.
e2e: deps build
	e2e/run.sh $(E2E_TIMEOUT)

# What CI runs (README's test command).
ci: lint test fuzz e2e

bench: bench-dataplane

bench-dataplane: deps
	$(GO) run ./bench/dataplane $(BENCH_ARGS)

# One gateway holding a team: 50 workstations, 2,000 flows, fairness, RSS, CPU.
bench-scale: deps
	$(GO) build -o $(BIN)/bench-scale ./bench/scale
	$(BIN)/bench-scale $(BENCH_ARGS)

demo: deps build
	e2e/demo.sh

clean:
	rm -rf $(BIN) bench/results

# bridgetun up vs kubectl port-forward on the e2e cluster (after make cluster-up images).
bench-cluster: build
	e2e/cluster/images.sh >/dev/null
	$(KUBECTL) --kubeconfig /var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig apply -f e2e/testdata/sample-app.yaml >/dev/null
	$(KUBECTL) --kubeconfig /var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig -n bt-sample rollout restart deploy/sink >/dev/null
	$(KUBECTL) --kubeconfig /var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig -n bt-sample rollout status deploy/sink --timeout=120s
	$(GO) run ./bench/cluster $(BENCH_ARGS)

# Headless paths to one pod: TUN vs netstack --forward vs SOCKS5 (after make cluster-up images).
bench-headless: build
	e2e/cluster/images.sh >/dev/null
	$(KUBECTL) --kubeconfig /var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig apply -f e2e/testdata/sample-app.yaml >/dev/null
	$(KUBECTL) --kubeconfig /var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig -n bt-sample rollout status deploy/sink --timeout=120s
	$(GO) run ./bench/headless $(BENCH_ARGS)

# Split-DNS latency at 2,000 q/s for 10 s, cluster and foreign names, against the upstream queried directly.
bench-dns:
	$(GO) test -count=1 -run '^$$' -bench Load -benchtime 1x -v ./dnsproxy/dnsbench/
