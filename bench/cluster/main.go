// Command cluster measures, in one run against the running e2e cluster,
// how fast the workstation namespace reaches a pod through
//
//	PF      kubectl port-forward (the baseline everyone has)
//	stream  bridgetun up --transport stream (WireGuard over one port-forward)
//	udp     bridgetun up --transport udp (WireGuard to the gateway's NodePort)
//
// For each: upload throughput to a TCP sink pod (median of -reps), and HTTP
// request latency p50/p99 over one keep-alive connection to a stats pod.
// Prints ratios against PF and writes bench/results/cluster.json.
// Needs root, `make cluster-up`, `make build` and `make images`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

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
	bytesN     = flag.Int64("bytes", 256<<20, "bytes per upload run")
	reps       = flag.Int("reps", 3, "upload runs per path (median reported)")
	rr         = flag.Int("rr", 1000, "HTTP requests for latency")
	out        = flag.String("o", "bench/results/cluster.json", "JSON results")
)

type result struct {
	Path string `json:"path"`
	benchutil.Sample
	Ratio    float64 `json:"throughput_ratio_vs_pf"`
	P50Ratio float64 `json:"p50_ratio_vs_pf"`
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	ws, err := nstest.Open(wsNS)
	if err != nil {
		log.Fatalf("%v (start the cluster: make cluster-up)", err)
	}
	ctx := context.Background()
	sinkPod, sinkIP := benchutil.PodOf(*kubectl, *kubeconfig, ns, "app=sink")
	statsPod, statsIP := benchutil.PodOf(*kubectl, *kubeconfig, ns, "app=stats")
	if sinkPod == "" || statsPod == "" {
		log.Fatal("need the sample app and the sink Deployment in bt-sample (run the e2e suite once with BRIDGETUN_E2E_KEEP=1)")
	}
	bin, _ := filepath.Abs("bin/bridgetun")
	state, _ := os.MkdirTemp("", "bt-bench-")
	defer os.RemoveAll(state)
	var results []result

	// PF: kubectl port-forward inside the workstation namespace.
	pf := exec.Command("ip", "netns", "exec", wsNS, *kubectl, "--kubeconfig", *kubeconfig, "-n", ns, "port-forward",
		"pod/"+sinkPod, "19000:9000")
	pf2 := exec.Command("ip", "netns", "exec", wsNS, *kubectl, "--kubeconfig", *kubeconfig, "-n", ns, "port-forward",
		"pod/"+statsPod, "19080:8080")
	for _, c := range []*exec.Cmd{pf, pf2} {
		stdout, _ := c.StdoutPipe()
		if err := c.Start(); err != nil {
			log.Fatal(err)
		}
		line, _ := bufio.NewReader(stdout).ReadString('\n') // "Forwarding from ..."
		log.Printf("kubectl: %s", strings.TrimSpace(line))
		go io.Copy(io.Discard, stdout)
	}
	results = append(results, measure(ctx, ws, "PF kubectl port-forward", "127.0.0.1:19000", "127.0.0.1:19080"))
	_ = pf.Process.Kill()
	_ = pf2.Process.Kill()
	_ = pf.Wait()
	_ = pf2.Wait()

	for _, tr := range []string{"stream", "udp"} {
		args := []string{"netns", "exec", wsNS, "env", "BRIDGETUN_STATE_DIR=" + state, "KUBECONFIG=" + *kubeconfig,
			bin, "up", "--background", "--upgrade", "-n", ns, "--gateway-image", image, "--transport", tr}
		if tr == "udp" {
			args = append(args, "--expose", "nodeport")
		}
		if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			log.Fatalf("up %s: %v\n%s", tr, err, b)
		}
		results = append(results, measure(ctx, ws, "bridgetun "+tr, sinkIP+":9000", statsIP+":8080"))
		if b, err := exec.Command("ip", "netns", "exec", wsNS, "env", "BRIDGETUN_STATE_DIR="+state, bin, "down").CombinedOutput(); err != nil {
			log.Fatalf("down: %v\n%s", err, b)
		}
	}

	base := results[0]
	fmt.Printf("\n%-26s %12s %8s %10s %10s %8s %7s\n", "path", "upload", "×PF", "http p50", "http p99", "p50×PF", "errors")
	for i := range results {
		r := &results[i]
		r.Ratio, r.P50Ratio = r.MBps/base.MBps, r.P50ms/base.P50ms
		fmt.Printf("%-26s %7.1f MB/s %7.2f× %8.3fms %8.3fms %7.2f× %7d\n", r.Path, r.MBps, r.Ratio, r.P50ms, r.P99ms, r.P50Ratio, r.Errors)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		b, _ := json.MarshalIndent(map[string]any{"time": time.Now().UTC(), "bytes": *bytesN, "reps": *reps, "results": results}, "", "  ")
		if os.WriteFile(*out, b, 0o644) == nil {
			fmt.Println("wrote", *out)
		}
	}
}

func measure(ctx context.Context, ws *nstest.NS, name, sink, httpAddr string) result {
	return result{Path: name, Sample: benchutil.Measure(ctx, name, ws.DialContext, sink, httpAddr, *bytesN, *reps, *rr)}
}
