// Command headless measures, in one run against the running e2e cluster,
// the three ways a workstation program reaches the same sink pod:
//
//	TUN      bridgetun up (root): the program dials the pod IP; the baseline
//	forward  bridgetun up --netstack --forward 127.0.0.1:19001=POD:9000
//	SOCKS5   bridgetun up --netstack: the program dials through 127.0.0.1:1080
//
// All three use the stream transport, so only the workstation side differs.
// Upload throughput (median of -reps, SHA-256 checked by the sink) and HTTP
// latency p50/p99 on one keep-alive connection; ratios against TUN.
// Target (issue 7): forward >= 0.7x TUN. Writes bench/results/headless.json.
// Needs root, `make cluster-up`, `make build` and `make images`.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/net/proxy"

	"github.com/bridgetun/bridgetun/bench/benchutil"
	"github.com/bridgetun/bridgetun/internal/nstest"
)

const (
	ns    = "bt-sample"
	wsNS  = "bt-ws"
	image = "bridgetun.local/bridgetun-agent:dev"
)

var (
	kubeconfig = flag.String("kubeconfig", "/var/tmp/bridgetun-e2e/run/pki/admin.kubeconfig", "e2e cluster kubeconfig")
	kubectl    = flag.String("kubectl", filepath.Join(os.Getenv("HOME"), ".cache/bridgetun/k8s-v1.34.4/kubectl"), "kubectl binary")
	bytesN     = flag.Int64("bytes", 128<<20, "bytes per upload run")
	reps       = flag.Int("reps", 3, "upload runs per path (median reported)")
	rr         = flag.Int("rr", 500, "HTTP requests for latency")
	out        = flag.String("o", "bench/results/headless.json", "JSON results")
)

type result struct {
	Path string `json:"path"`
	benchutil.Sample
	Ratio    float64 `json:"throughput_ratio_vs_tun"`
	P50Ratio float64 `json:"p50_ratio_vs_tun"`
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	ws, err := nstest.Open(wsNS)
	if err != nil {
		log.Fatalf("%v (start the cluster: make cluster-up)", err)
	}
	_, sinkIP := benchutil.PodOf(*kubectl, *kubeconfig, ns, "app=sink")
	_, statsIP := benchutil.PodOf(*kubectl, *kubeconfig, ns, "app=stats")
	if sinkIP == "" || statsIP == "" {
		log.Fatal("need the sample app (sink, stats) in bt-sample: run make demo or the e2e suite with BRIDGETUN_E2E_KEEP=1")
	}
	bin, _ := filepath.Abs("bin/bridgetun")
	state, _ := os.MkdirTemp("", "bt-bench-")
	defer os.RemoveAll(state)
	up := func(extra ...string) {
		args := append([]string{"netns", "exec", wsNS, "env", "BRIDGETUN_STATE_DIR=" + state, "TMPDIR=" + state, "KUBECONFIG=" + *kubeconfig,
			bin, "up", "--background", "--upgrade", "-n", ns, "--gateway-image", image, "--transport", "stream"}, extra...)
		if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			log.Fatalf("up %v: %v\n%s", extra, err, b)
		}
	}
	down := func() {
		if b, err := exec.Command("ip", "netns", "exec", wsNS, "env", "BRIDGETUN_STATE_DIR="+state, "TMPDIR="+state, bin, "down").CombinedOutput(); err != nil {
			log.Fatalf("down: %v\n%s", err, b)
		}
	}
	ctx := context.Background()
	var results []result

	up()
	results = append(results, measure(ctx, "TUN (pod IP)", ws.DialContext, sinkIP+":9000", statsIP+":8080"))
	down()

	up("--netstack", "--forward", "127.0.0.1:19001="+sinkIP+":9000", "--forward", "127.0.0.1:19081="+statsIP+":8080")
	results = append(results, measure(ctx, "netstack forward", ws.DialContext, "127.0.0.1:19001", "127.0.0.1:19081"))
	socks, err := proxy.SOCKS5("tcp", "127.0.0.1:1080", nil, dialerFunc(ws.DialContext))
	if err != nil {
		log.Fatal(err)
	}
	sd := socks.(proxy.ContextDialer)
	results = append(results, measure(ctx, "netstack SOCKS5", sd.DialContext, sinkIP+":9000", statsIP+":8080"))
	down()

	base := results[0]
	fmt.Printf("\n%-20s %12s %8s %10s %10s %8s %7s\n", "path", "upload", "×TUN", "http p50", "http p99", "p50×TUN", "errors")
	for i := range results {
		r := &results[i]
		r.Ratio, r.P50Ratio = r.MBps/base.MBps, r.P50ms/base.P50ms
		fmt.Printf("%-20s %7.1f MB/s %7.2f× %8.3fms %8.3fms %7.2f× %7d\n", r.Path, r.MBps, r.Ratio, r.P50ms, r.P99ms, r.P50Ratio, r.Errors)
	}
	fmt.Printf("target: forward >= 0.70× TUN: %.2f× (%s)\n", results[1].Ratio, map[bool]string{true: "met", false: "missed"}[results[1].Ratio >= 0.7])
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		b, _ := json.MarshalIndent(map[string]any{"time": time.Now().UTC(), "bytes": *bytesN, "reps": *reps, "results": results}, "", "  ")
		if os.WriteFile(*out, b, 0o644) == nil {
			fmt.Println("wrote", *out)
		}
	}
}

// dialerFunc adapts a DialContext to proxy.Dialer (the SOCKS client's way to
// reach its server inside the workstation namespace).
type dialerFunc benchutil.DialFunc

func (d dialerFunc) Dial(network, addr string) (net.Conn, error) {
	return d(context.Background(), network, addr)
}

func (d dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return d(ctx, network, addr)
}

func measure(ctx context.Context, name string, dial benchutil.DialFunc, sink, httpAddr string) result {
	return result{Path: name, Sample: benchutil.Measure(ctx, name, dial, sink, httpAddr, *bytesN, *reps, *rr)}
}
