// Command cluster measures, in one run against the running e2e cluster, how
// fast a workstation reaches a pod through
//
//	direct  the node itself dialling the pod IP (the ceiling)
//	PF      kubectl port-forward from the workstation namespace (the baseline everyone has)
//	stream  bridgetun up --transport stream (WireGuard over one port-forward)
//	udp     bridgetun up --transport udp (WireGuard to the gateway's NodePort)
//
// For each: bulk upload and download to a sink pod (median of -reps, the
// bytes checked by SHA-256), HTTP request/response rate and p50 with 1 and
// with 20 concurrent keep-alive connections to a stats pod, and the CPU
// seconds per GB of bulk transfer on the workstation side (kubectl or the
// bridgetun session) and on the cluster side (kube-apiserver, kubelet,
// containerd and the gateway, which carry the port-forward and the tunnel).
// Prints ratios against PF and direct, checks issue #14's targets, and writes
// bench/results/cluster.json. Needs root, `make cluster-up`, `make build` and
// `make images` (make bench-cluster does all of it).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
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
	bytesN     = flag.Int64("bytes", 256<<20, "bytes per bulk run")
	reps       = flag.Int("reps", 3, "bulk runs per path and direction (median reported)")
	rrFor      = flag.Duration("rr-time", 5*time.Second, "request/response measuring time per concurrency")
	paths      = flag.String("paths", "direct,pf,stream,udp", "paths to measure, comma-separated")
	streams    = flag.String("streams", "", "stream path: also measure with these port-forward counts (BRIDGETUN_STREAMS), e.g. 1,2,4; empty = the default only")
	out        = flag.String("o", "bench/results/cluster.json", "JSON results")
)

// clusterProcs carry the port-forward and the tunnel on the cluster side.
var clusterProcs = []string{"kube-apiserver", "kubelet", "containerd", "bridgetun-agent"}

type result struct {
	Path         string         `json:"path"`
	UpMBps       float64        `json:"up_MBps"`
	DownMBps     float64        `json:"down_MBps"`
	RR1          benchutil.Rate `json:"rr_1"`
	RR20         benchutil.Rate `json:"rr_20"`
	ClientCPUGB  float64        `json:"client_cpu_s_per_GB"`
	ClusterCPUGB float64        `json:"cluster_cpu_s_per_GB"`
	// ClusterCPUByProc splits ClusterCPUGB by process name, so the cost of
	// the API server chain and of the gateway can be told apart.
	ClusterCPUByProc map[string]float64 `json:"cluster_cpu_s_per_GB_by_process"`
	Errors           int                `json:"errors"`
	VsPF             map[string]float64 `json:"ratio_vs_pf,omitempty"`
	VsDirect         map[string]float64 `json:"ratio_vs_direct,omitempty"`
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
		log.Fatal("need the sample app and the sink Deployment in bt-sample (make bench-cluster applies them)")
	}
	bin, _ := filepath.Abs("bin/bridgetun")
	state, _ := os.MkdirTemp("", "bt-bench-")
	defer os.RemoveAll(state)
	want := map[string]bool{}
	for _, p := range strings.Split(*paths, ",") {
		want[strings.TrimSpace(p)] = true
	}
	var results []result

	if want["direct"] {
		var d net.Dialer
		results = append(results, measure(ctx, "direct", d.DialContext, nil, net.JoinHostPort(sinkIP, "9000"), net.JoinHostPort(statsIP, "8080")))
	}
	if want["pf"] {
		var pids []int
		var cmds []*exec.Cmd
		for _, fw := range [][2]string{{"pod/" + sinkPod, "19000:9000"}, {"pod/" + statsPod, "19080:8080"}} {
			c := exec.Command("ip", "netns", "exec", wsNS, *kubectl, "--kubeconfig", *kubeconfig, "-n", ns, "port-forward", fw[0], fw[1])
			stdout, _ := c.StdoutPipe()
			if err := c.Start(); err != nil {
				log.Fatal(err)
			}
			line, _ := bufio.NewReader(stdout).ReadString('\n') // "Forwarding from ..."
			log.Printf("kubectl: %s", strings.TrimSpace(line))
			go io.Copy(io.Discard, stdout)
			cmds = append(cmds, c)
			pids = append(pids, c.Process.Pid) // ip netns exec execs kubectl: same pid
		}
		results = append(results, measure(ctx, "PF kubectl port-forward", ws.DialContext, pids, "127.0.0.1:19000", "127.0.0.1:19080"))
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
	type run struct{ transport, streams string }
	var runs []run
	if want["stream"] {
		if *streams == "" {
			runs = append(runs, run{"stream", ""})
		}
		for _, n := range strings.Split(*streams, ",") {
			if n = strings.TrimSpace(n); n != "" {
				runs = append(runs, run{"stream", n})
			}
		}
	}
	if want["udp"] {
		runs = append(runs, run{"udp", ""})
	}
	for _, rn := range runs {
		tr := rn.transport
		name := "bridgetun " + tr
		env := []string{"netns", "exec", wsNS, "env", "BRIDGETUN_STATE_DIR=" + state, "KUBECONFIG=" + *kubeconfig}
		if rn.streams != "" {
			env = append(env, "BRIDGETUN_STREAMS="+rn.streams)
			name += " ×" + rn.streams
		}
		env = append(env, bin)
		args := append(env, "up", "--background", "--upgrade", "-n", ns, "--gateway-image", image, "--transport", tr)
		if tr == "udp" {
			args = append(args, "--expose", "nodeport")
		}
		if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			log.Fatalf("up %s: %v\n%s", tr, err, b)
		}
		var st struct {
			PID int `json:"pid"`
		}
		b, err := exec.Command("ip", append(env, "status", "--json")...).Output()
		if err != nil || json.Unmarshal(b, &st) != nil || st.PID == 0 {
			log.Fatalf("status --json: %v\n%s", err, b)
		}
		results = append(results, measure(ctx, name, ws.DialContext, []int{st.PID}, net.JoinHostPort(sinkIP, "9000"), net.JoinHostPort(statsIP, "8080")))
		if b, err := exec.Command("ip", append(env, "down")...).CombinedOutput(); err != nil {
			log.Fatalf("down: %v\n%s", err, b)
		}
	}
	report(results)
}

// measure runs every measurement of one path; clientPIDs are the
// workstation-side processes of the path (none for direct).
func measure(ctx context.Context, name string, dial benchutil.DialFunc, clientPIDs []int, sink, httpAddr string) result {
	log.Printf("measuring %s", name)
	r := result{Path: name}
	pids := map[string][]int{}
	cpu0 := map[string]float64{}
	for _, n := range clusterProcs {
		pids[n] = benchutil.PIDsNamed(n)
		cpu0[n] = benchutil.CPUSeconds(pids[n]...)
	}
	c0 := benchutil.CPUSeconds(clientPIDs...)
	var moved int64
	var ups, downs []float64
	for range *reps {
		if v, err := benchutil.Upload(ctx, dial, sink, *bytesN); err != nil {
			log.Printf("%s upload: %v", name, err)
			r.Errors++
		} else {
			ups, moved = append(ups, v), moved+*bytesN
		}
		if v, err := benchutil.Download(ctx, dial, sink, *bytesN); err != nil {
			log.Printf("%s download: %v", name, err)
			r.Errors++
		} else {
			downs, moved = append(downs, v), moved+*bytesN
		}
	}
	if gb := float64(moved) / 1e9; gb > 0 {
		r.ClientCPUGB = (benchutil.CPUSeconds(clientPIDs...) - c0) / gb
		r.ClusterCPUByProc = map[string]float64{}
		for _, n := range clusterProcs {
			r.ClusterCPUByProc[n] = (benchutil.CPUSeconds(pids[n]...) - cpu0[n]) / gb
			r.ClusterCPUGB += r.ClusterCPUByProc[n]
		}
	}
	r.UpMBps, r.DownMBps = benchutil.Median(ups), benchutil.Median(downs)
	r.RR1 = benchutil.RequestRate(dial, "http://"+httpAddr, 1, *rrFor)
	r.RR20 = benchutil.RequestRate(dial, "http://"+httpAddr, 20, *rrFor)
	r.Errors += r.RR1.Errors + r.RR20.Errors
	return r
}

func ratios(r, base result) map[string]float64 {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	return map[string]float64{
		"up": div(r.UpMBps, base.UpMBps), "down": div(r.DownMBps, base.DownMBps),
		"rr1_rps": div(r.RR1.RPS, base.RR1.RPS), "rr20_rps": div(r.RR20.RPS, base.RR20.RPS),
	}
}

func report(results []result) {
	var pf, direct *result
	for i := range results {
		switch {
		case strings.HasPrefix(results[i].Path, "PF"):
			pf = &results[i]
		case results[i].Path == "direct":
			direct = &results[i]
		}
	}
	for i := range results {
		if pf != nil {
			results[i].VsPF = ratios(results[i], *pf)
		}
		if direct != nil {
			results[i].VsDirect = ratios(results[i], *direct)
		}
	}
	fmt.Printf("\n%-24s %16s %16s %22s %22s %13s %13s %6s\n", "path", "upload", "download", "rr 1 conn", "rr 20 conns", "client cpu", "cluster cpu", "errors")
	for _, r := range results {
		x := func(k string) string {
			if r.VsPF == nil {
				return ""
			}
			return fmt.Sprintf("%.2f×", r.VsPF[k])
		}
		fmt.Printf("%-24s %7.0f MB/s %6s %7.0f MB/s %6s %6.0f/s %5.2fms %6s %6.0f/s %5.2fms %6s %8.2f s/GB %8.2f s/GB %6d\n", r.Path,
			r.UpMBps, x("up"), r.DownMBps, x("down"),
			r.RR1.RPS, r.RR1.P50ms, x("rr1_rps"), r.RR20.RPS, r.RR20.P50ms, x("rr20_rps"),
			r.ClientCPUGB, r.ClusterCPUGB, r.Errors)
	}
	fmt.Println("(× = ratio to kubectl port-forward from the same run; rates are requests/s, ms the p50)")
	fmt.Println("cluster cpu by process, s/GB:")
	for _, r := range results {
		if r.ClusterCPUByProc == nil {
			continue
		}
		fmt.Printf("  %-22s", r.Path)
		for _, n := range clusterProcs {
			fmt.Printf(" %s %.2f", n, r.ClusterCPUByProc[n])
		}
		fmt.Println()
	}
	check := func(path, what string, got, target float64) {
		verdict := "✓"
		if got < target {
			verdict = "✗"
		}
		fmt.Printf("target %-10s %-22s %5.2f× (≥ %.1f×) %s\n", path, what, got, target, verdict)
	}
	for _, r := range results {
		switch {
		case strings.HasPrefix(r.Path, "bridgetun stream"):
			if r.VsPF != nil {
				for _, k := range []string{"up", "down", "rr1_rps", "rr20_rps"} {
					check(strings.TrimPrefix(r.Path, "bridgetun "), k+" vs PF", r.VsPF[k], 1.0)
				}
			}
		case r.Path == "bridgetun udp":
			if r.VsPF != nil {
				check("udp", "up vs PF", r.VsPF["up"], 2.0)
				check("udp", "down vs PF", r.VsPF["down"], 2.0)
			}
			if r.VsDirect != nil {
				check("udp", "rr20_rps vs direct", r.VsDirect["rr20_rps"], 0.5)
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		b, _ := json.MarshalIndent(map[string]any{"time": time.Now().UTC(), "bytes": *bytesN, "reps": *reps, "rr_time": rrFor.String(), "results": results}, "", "  ")
		if os.WriteFile(*out, b, 0o644) == nil {
			fmt.Println("wrote", *out)
		}
	}
}
