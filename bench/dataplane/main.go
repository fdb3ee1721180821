// Command dataplane measures the data-plane paths in one run on one
// topology (internal/dptopo) and prints each against the direct path P0:
//
//	P0  ws → gw (kernel forwarding) → svc, no tunnel: the ceiling
//	P1  TUN client + UDP transport
//	P2  netstack client + UDP transport
//	P3  TUN client + stream transport (inner MTU 1420, and a large one)
//
// For each: bulk TCP upload with 1 and 4 flows, download with 1 flow (median
// of -reps runs), and request/response latency p50/p99 over one connection.
// Needs root. Results also go to bench/results/dataplane.json.
package main

import (
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
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/internal/dptopo"
	"github.com/bridgetun/bridgetun/internal/nstest"
)

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

type result struct {
	Path       string  `json:"path"`
	Desc       string  `json:"desc"`
	MTU        int     `json:"mtu"`
	Up1Gbps    float64 `json:"up_1flow_gbps"`
	Up4Gbps    float64 `json:"up_4flows_gbps"`
	Down1Gbps  float64 `json:"down_1flow_gbps"`
	P50us      float64 `json:"rr_p50_us"`
	P99us      float64 `json:"rr_p99_us"`
	RatioUp1   float64 `json:"ratio_up_1flow_vs_p0"`
	RatioDown1 float64 `json:"ratio_down_1flow_vs_p0"`
	AddedP50us float64 `json:"added_p50_us_vs_p0"`
}

var (
	dur    = flag.Duration("duration", 3*time.Second, "length of each throughput run")
	reps   = flag.Int("reps", 3, "runs per 1-flow measurement (median reported)")
	rtts   = flag.Int("rr", 3000, "request/response round trips for latency")
	bigMTU = flag.Int("big-mtu", 32000, "inner MTU for the large-MTU stream run (0 = skip)")
	out    = flag.String("o", "bench/results/dataplane.json", "JSON results file")
	prof   = flag.String("profile", "", "write CPU profiles of each tunnel path here: client-PATH.pprof (this process) and gateway-PATH.pprof (the agent), and the client's allocations as client-PATH.allocs.pprof; read with go tool pprof -top")
	only   = flag.String("paths", "", "comma-separated tunnel paths to run (P1,P2,P3,P3b; empty = all); P0 always runs")
	gwEnv  = flag.String("gateway-env", "", "extra environment of the gateway process, comma-separated K=V (e.g. GOMAXPROCS=1), to measure a runtime setting against the default in one run")
	dirs   = flag.String("measure", "up,down,up4,rr", "comma-separated measurements per path: up, down (1 flow, -reps runs), up4 (4 flows), rr (latency); profile one direction by naming only it")
)

// measuring reports whether -measure names m.
func measuring(m string) bool { return slices.Contains(strings.Split(*dirs, ","), m) }

func main() {
	flag.Parse()
	log.SetFlags(0)
	if !nstest.Root() {
		log.Fatal("bench-dataplane needs root to build namespaces: run with sudo")
	}
	dir, err := os.MkdirTemp("", "bt-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bridgetun-agent")
	if b, err := exec.Command("go", "build", "-o", bin, "github.com/bridgetun/bridgetun/cmd/bridgetun-agent").CombinedOutput(); err != nil {
		log.Fatalf("build agent: %v\n%s", err, b)
	}
	gwLog, _ := os.Create(filepath.Join(dir, "gateway.log"))
	topo, err := dptopo.New("bn", bin, gwLog)
	if err != nil {
		log.Fatal(err)
	}
	defer topo.Close()
	ctx := context.Background()
	var results []result

	// P0: let gw forward, route ws → svc through it.
	must(topo.GW.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"))
	must(topo.WS.Run("ip", "route", "add", "10.200.2.0/24", "via", dptopo.GatewayWSIP))
	results = append(results, measure("P0", "direct veth via gw, no tunnel", 1500, topo.WS.DialContext))
	must(topo.WS.Run("ip", "route", "del", "10.200.2.0/24", "via", dptopo.GatewayWSIP))
	must(topo.GW.Run("sysctl", "-qw", "net.ipv4.ip_forward=0"))

	type path struct {
		name, desc string
		tr         client.Transport
		mode       client.Mode
		mtu        int
	}
	paths := []path{
		{"P1", "TUN + udp", client.TransportUDP, client.ModeTUN, 1420},
		{"P2", "netstack + udp", client.TransportUDP, client.ModeNetstack, 1420},
		{"P3", "TUN + stream", client.TransportStream, client.ModeTUN, 1420},
	}
	if *bigMTU > 0 {
		paths = append(paths, path{"P3b", fmt.Sprintf("TUN + stream, MTU %d", *bigMTU), client.TransportStream, client.ModeTUN, *bigMTU})
	}
	if *prof != "" {
		if err := os.MkdirAll(*prof, 0o755); err != nil {
			log.Fatal(err)
		}
	}
	for _, p := range paths {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), p.name) {
			continue
		}
		stopProfile := func() {}
		topo.GatewayEnv = nil
		if *gwEnv != "" {
			topo.GatewayEnv = strings.Split(*gwEnv, ",")
		}
		if *prof != "" {
			gw, err := filepath.Abs(filepath.Join(*prof, "gateway-"+p.name+".pprof"))
			if err != nil {
				log.Fatal(err)
			}
			topo.GatewayEnv = append(topo.GatewayEnv, "BRIDGETUN_CPUPROFILE="+gw)
			stopProfile = startCPUProfile(filepath.Join(*prof, "client-"+p.name+".pprof"))
			runtime.MemProfileRate = 64 << 10
			stopCPU := stopProfile
			stopProfile = func() {
				stopCPU()
				writeAllocs(filepath.Join(*prof, "client-"+p.name+".allocs.pprof"))
			}
		}
		if err := topo.StartGateway(ctx, p.mtu); err != nil {
			log.Fatal(err)
		}
		c, err := dptopo.Connect(topo.WS, topo.ClientConfig(0, topo.WS, p.tr, p.mode, p.mtu))
		if err != nil {
			log.Fatalf("%s: connect: %v", p.name, err)
		}
		dial := dialFunc(topo.WS.DialContext)
		if s := c.Netstack(); s != nil {
			dial = s.DialContext
		}
		results = append(results, measure(p.name, p.desc, p.mtu, dial))
		_ = c.Close()
		stopProfile()
		topo.StopGateway() // the agent writes its profile as it exits
	}

	base := results[0]
	fmt.Printf("\n%-4s %-28s %10s %8s %10s %10s %8s %9s %9s %10s\n", "path", "", "up 1flow", "×P0", "up 4flows", "down 1flow", "×P0", "rr p50", "rr p99", "+p50 vs P0")
	for i := range results {
		r := &results[i]
		r.RatioUp1 = ratio(r.Up1Gbps, base.Up1Gbps)
		r.RatioDown1 = ratio(r.Down1Gbps, base.Down1Gbps)
		r.AddedP50us = r.P50us - base.P50us
		fmt.Printf("%-4s %-28s %6.2f Gb/s %7.2f× %6.2f Gb/s %6.2f Gb/s %7.2f× %7.0fµs %7.0fµs %8.0fµs\n",
			r.Path, r.Desc, r.Up1Gbps, r.RatioUp1, r.Up4Gbps, r.Down1Gbps, r.RatioDown1, r.P50us, r.P99us, r.AddedP50us)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		b, _ := json.MarshalIndent(map[string]any{"time": time.Now().UTC(), "duration": dur.String(), "reps": *reps, "results": results}, "", "  ")
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			log.Print(err)
		} else {
			fmt.Println("wrote", *out)
		}
	}
}

// startCPUProfile profiles this process into path until the returned stop.
func startCPUProfile(path string) (stop func()) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

// writeAllocs writes the allocations made since the start (or the last
// path's profile) as an allocs profile to path.
func writeAllocs(path string) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		log.Print(err)
	}
}

func measure(name, desc string, mtu int, dial dialFunc) result {
	log.Printf("measuring %s (%s)", name, desc)
	r := result{Path: name, Desc: desc, MTU: mtu}
	var ups, downs []float64
	for range *reps {
		if measuring("up") {
			ups = append(ups, throughput(dial, dptopo.SvcIP+":5001", 1, true))
		}
		if measuring("down") {
			downs = append(downs, throughput(dial, dptopo.SvcIP+":5003", 1, false))
		}
	}
	r.Up1Gbps, r.Down1Gbps = median(ups), median(downs)
	if measuring("up4") {
		r.Up4Gbps = throughput(dial, dptopo.SvcIP+":5001", 4, true)
	}
	if measuring("rr") {
		r.P50us, r.P99us = latency(dial, dptopo.SvcIP+":5002")
	}
	return r
}

// throughput runs flows for *dur and returns Gbit/s of payload moved.
func throughput(dial dialFunc, addr string, flows int, upload bool) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), *dur+10*time.Second)
	defer cancel()
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	stopAt := start.Add(*dur)
	for range flows {
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			log.Printf("dial %s: %v", addr, err)
			return 0
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 128<<10)
			_ = c.SetDeadline(stopAt)
			for {
				var n int
				var err error
				if upload {
					n, err = c.Write(buf)
				} else {
					n, err = c.Read(buf)
				}
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	return float64(total.Load()) * 8 / el / 1e9
}

// latency measures 64-byte request/response round trips on one connection.
func latency(dial dialFunc, addr string) (p50, p99 float64) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		log.Printf("dial %s: %v", addr, err)
		return 0, 0
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	req, resp := make([]byte, 64), make([]byte, 64)
	var samples []float64
	for i := range *rtts + 100 {
		t0 := time.Now()
		if _, err := c.Write(req); err != nil {
			log.Print(err)
			break
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			log.Print(err)
			break
		}
		if i >= 100 { // warm-up excluded
			samples = append(samples, float64(time.Since(t0).Nanoseconds())/1e3)
		}
	}
	if len(samples) == 0 {
		return 0, 0
	}
	slices.Sort(samples)
	return samples[len(samples)/2], samples[len(samples)*99/100]
}

// ratio is a/b, 0 when b is (a measurement left out by -measure; JSON has no NaN).
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
