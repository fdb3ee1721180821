// Command scale measures one gateway holding a team (issue #14.5), on the
// data-plane topology (internal/dptopo), no cluster needed:
//
//	client RSS  one TUN client (its own process) downloading in bulk
//	flows       -peers netstack workstations holding -flows concurrent
//	            request/response flows: round trips per flow, fairness
//	            (Jain's index, min/median), flows starved (< 10% of the median)
//	bulk        one upload flow per workstation at once: aggregate Gbit/s and
//	            per-workstation fairness
//	slow reader 4 bulk download flows of one workstation, alone (before and
//	            after) and beside another workstation's flow that reads 1 KiB
//	            every 20 ms: the 4 must not be starved by it
//
// The gateway's RSS (idle, and peak with every flow open) and CPU seconds
// are read from /proc. Needs root. Results also go to bench/results/scale.json.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/internal/dptopo"
	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/tunnel"
)

var (
	peers   = flag.Int("peers", 50, "workstations (netstack clients over UDP) on the one gateway")
	flows   = flag.Int("flows", 2000, "concurrent request/response flows, spread over the workstations")
	dur     = flag.Duration("duration", 5*time.Second, "length of each measured phase")
	heap    = flag.String("heap-profile", "", "write the gateway's heap profile (allocs) here when it exits, and live-heap and goroutine snapshots late in each phase to PATH.N and PATH.N.goroutines")
	memLim  = flag.String("gateway-gomemlimit", "", "GOMEMLIMIT of the gateway process (e.g. 96MiB; \"\" = Go's default)")
	gogc    = flag.String("gateway-gogc", "", "GOGC of the gateway process (e.g. 50; \"\" = the gateway's default)")
	out     = flag.String("out", "bench/results/scale.json", "JSON results")
	child   = flag.Bool("client-child", false, "internal: run one TUN client that downloads in bulk and report its RSS (the parent starts it inside the workstation namespace)")
	childGW = flag.String("gateway-key", "", "internal: the gateway's public key (client child)")
)

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Results is what the run measured.
type Results struct {
	Peers, Flows int
	Duration     string

	ClientRSSMiB, ClientHWMMiB float64 // the TUN client process during its bulk download
	ClientDownGbps             float64

	GatewayIdleRSSMiB  float64 // before any workstation connected
	GatewayPeakRSSMiB  float64 // VmHWM after every phase
	GatewayPeersRSSMiB float64 // VmRSS with every workstation connected, before the flows
	GatewayFlowsRSSMiB float64 // VmRSS right after the flows phase (its peak is the HWM then)
	GatewayFlowsHWMMiB float64
	GatewayBulkHWMMiB  float64 // VmHWM after the bulk phase
	GatewayRSSTarget   float64 // 40 MiB + 2 MiB per peer
	GatewayCPUSeconds  float64 // user+system over the whole run
	// GatewayMem is the gateway's memory by phase, sampled while it ran:
	// whether an RSS peak is live heap, GC lag or goroutine stacks.
	GatewayMem []PhaseMem

	FlowsOpened      int
	RoundTripsPerSec float64 // all flows together
	FlowJain         float64
	FlowMinOverMed   float64
	FlowsStarved     int

	BulkGbps      float64
	BulkPeerJain  float64
	BulkMinOverMd float64

	SlowAloneGbps  float64 // 4 flows, no slow reader
	SlowBesideGbps float64 // 4 flows beside the slow reader
	SlowRatio      float64
	SlowFlowJain   float64 // among the 4, beside the slow reader
}

func main() {
	flag.Parse()
	log.SetFlags(0)
	if *child {
		runClientChild()
		return
	}
	if !nstest.Root() {
		log.Fatal("bench-scale needs root to build namespaces: run with sudo")
	}
	dir, err := os.MkdirTemp("", "bt-scale-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bridgetun-agent")
	if b, err := exec.Command("go", "build", "-o", bin, "github.com/bridgetun/bridgetun/cmd/bridgetun-agent").CombinedOutput(); err != nil {
		log.Fatalf("build agent: %v\n%s", err, b)
	}
	gwLog, _ := os.Create(filepath.Join(dir, "gateway.log"))
	topo, err := dptopo.New("sc", bin, gwLog)
	if err != nil {
		log.Fatal(err)
	}
	defer topo.Close()
	// Key 0 is the client child's; 1 and the added ones are the team.
	extra, err := topo.AddPeers(*peers - 1)
	if err != nil {
		log.Fatal(err)
	}
	team := append([]int{1}, extra...)
	ctx := context.Background()
	if *heap != "" {
		abs, err := filepath.Abs(*heap)
		if err != nil {
			log.Fatal(err)
		}
		topo.GatewayEnv = append(topo.GatewayEnv, "BRIDGETUN_HEAPPROFILE="+abs)
	}
	if *memLim != "" {
		topo.GatewayEnv = append(topo.GatewayEnv, "GOMEMLIMIT="+*memLim)
	}
	if *gogc != "" {
		topo.GatewayEnv = append(topo.GatewayEnv, "GOGC="+*gogc)
	}
	if err := topo.StartGateway(ctx, 1420); err != nil {
		log.Fatal(err)
	}
	pid := topo.GatewayPID()
	r := Results{Peers: *peers, Flows: *flows, Duration: dur.String(), GatewayRSSTarget: 40 + 2*float64(*peers)}
	r.GatewayIdleRSSMiB, _ = procMiB(pid, "VmRSS")
	cpu0 := procCPU(pid)

	var snap time.Duration // heap snapshots (path.N) late in each phase, with -heap-profile
	if *heap != "" {
		snap = *dur * 4 / 5
	}
	mem := startSampler(topo, pid, snap)
	mem.phase("client down")
	r.ClientRSSMiB, r.ClientHWMMiB, r.ClientDownGbps = clientChild(topo)

	mem.phase("peers join")
	var stacks []dialFunc
	var clients []*client.Client
	for _, i := range team {
		c, err := dptopo.Connect(topo.WS, topo.ClientConfig(i, topo.WS, client.TransportUDP, client.ModeNetstack, 1420))
		if err != nil {
			log.Fatalf("workstation %d: connect: %v", i, err)
		}
		clients = append(clients, c)
		stacks = append(stacks, c.Netstack().DialContext)
	}
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()

	r.GatewayPeersRSSMiB, _ = procMiB(pid, "VmRSS")
	mem.phase("flows")
	flowPhase(&r, stacks)
	r.GatewayFlowsRSSMiB, _ = procMiB(pid, "VmRSS")
	r.GatewayFlowsHWMMiB, _ = procMiB(pid, "VmHWM")
	mem.phase("bulk")
	bulkPhase(&r, stacks)
	r.GatewayBulkHWMMiB, _ = procMiB(pid, "VmHWM")
	mem.phase("slow reader")
	slowReaderPhase(&r, stacks)
	r.GatewayMem = mem.stop()

	r.GatewayPeakRSSMiB, _ = procMiB(pid, "VmHWM")
	r.GatewayCPUSeconds = procCPU(pid) - cpu0
	topo.StopGateway() // writes the heap profile, if asked
	printResults(r)
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		b, _ := json.MarshalIndent(map[string]any{"time": time.Now().UTC(), "results": r}, "", "  ")
		if err := os.WriteFile(*out, b, 0o644); err != nil {
			log.Print(err)
		} else {
			fmt.Println("wrote", *out)
		}
	}
}

func printResults(r Results) {
	fmt.Printf("\none gateway, %d workstations, phases of %s\n", r.Peers, r.Duration)
	fmt.Printf("client (TUN, own process, bulk download %.2f Gbit/s): RSS %.1f MiB, peak %.1f MiB (target ≤ 60)\n", r.ClientDownGbps, r.ClientRSSMiB, r.ClientHWMMiB)
	fmt.Printf("gateway RSS: idle %.1f MiB, peak %.1f MiB (target ≤ %.0f = 40 + 2×%d); CPU %.1f s\n", r.GatewayIdleRSSMiB, r.GatewayPeakRSSMiB, r.GatewayRSSTarget, r.Peers, r.GatewayCPUSeconds)
	fmt.Printf("gateway RSS by phase: %d peers connected %.1f MiB; flows phase peak %.1f MiB (after it %.1f); bulk phase peak %.1f MiB\n", r.Peers, r.GatewayPeersRSSMiB, r.GatewayFlowsHWMMiB, r.GatewayFlowsRSSMiB, r.GatewayBulkHWMMiB)
	for _, m := range r.GatewayMem {
		fmt.Printf("  %-11s RSS peak %.1f MiB; at it heap in use %.1f, heap goal %.1f, stacks %.1f, goroutines %d; peaks heap in use %.1f, stacks %.1f MiB\n",
			m.Phase, m.RSSMiB, m.AtPeak.HeapInuseMiB, m.AtPeak.HeapGoalMiB, m.AtPeak.StackMiB, m.AtPeak.Goroutines, m.HeapInuseMaxMiB, m.StackMaxMiB)
	}
	fmt.Printf("flows: %d of %d open, %.0f round trips/s in all, Jain %.3f, min/median %.2f, starved %d\n", r.FlowsOpened, r.Flows, r.RoundTripsPerSec, r.FlowJain, r.FlowMinOverMed, r.FlowsStarved)
	fmt.Printf("bulk: %d upload flows, %.2f Gbit/s in all, per-workstation Jain %.3f, min/median %.2f\n", r.Peers, r.BulkGbps, r.BulkPeerJain, r.BulkMinOverMd)
	fmt.Printf("slow reader: 4 download flows %.2f Gbit/s alone, %.2f beside it (%.2f×), Jain among the 4 %.3f\n", r.SlowAloneGbps, r.SlowBesideGbps, r.SlowRatio, r.SlowFlowJain)
}

// flowPhase holds -flows request/response flows to the echo server at
// once and counts each one's round trips.
func flowPhase(r *Results, stacks []dialFunc) {
	addr := net.JoinHostPort(dptopo.SvcIP, "5002")
	conns := make([]net.Conn, *flows)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // opening 2000 at once only measures SYN queues
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := stacks[i%len(stacks)](ctx, "tcp", addr)
			if err == nil {
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	counts := make([]float64, len(conns))
	stop := make(chan struct{})
	for i, c := range conns {
		if c == nil {
			continue
		}
		r.FlowsOpened++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, 64)
			for {
				select {
				case <-stop:
					return
				default:
				}
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(buf); err != nil {
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					return
				}
				counts[i]++
			}
		}()
	}
	time.Sleep(*dur) // the measured phase: flows run on their own meanwhile
	close(stop)
	wg.Wait()
	var total float64
	for _, n := range counts {
		total += n
	}
	r.RoundTripsPerSec = total / dur.Seconds()
	r.FlowJain, r.FlowMinOverMed = fairness(counts)
	med := median(counts)
	for _, n := range counts {
		if n < med/10 {
			r.FlowsStarved++
		}
	}
}

// bulkPhase uploads on one flow per workstation at once.
func bulkPhase(r *Results, stacks []dialFunc) {
	bytes := make([]float64, len(stacks))
	var wg sync.WaitGroup
	deadline := time.Now().Add(*dur)
	for i, dial := range stacks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bytes[i] = float64(stream(dial, net.JoinHostPort(dptopo.SvcIP, "5001"), deadline, true, 0))
		}()
	}
	wg.Wait()
	var total float64
	for _, b := range bytes {
		total += b
	}
	r.BulkGbps = total * 8 / dur.Seconds() / 1e9
	r.BulkPeerJain, r.BulkMinOverMd = fairness(bytes)
}

// slowReaderPhase: 4 download flows of workstation 0, alone and then beside
// workstation 1's flow that reads 1 KiB every 20 ms.
func slowReaderPhase(r *Results, stacks []dialFunc) {
	src := net.JoinHostPort(dptopo.SvcIP, "5003")
	four := func() []float64 {
		got := make([]float64, 4)
		var wg sync.WaitGroup
		deadline := time.Now().Add(*dur)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i] = float64(stream(stacks[0], src, deadline, false, 0))
			}()
		}
		wg.Wait()
		return got
	}
	sum := func(v []float64) (s float64) {
		for _, x := range v {
			s += x
		}
		return s
	}
	// Alone before and after (their mean): the machine is noisy and the
	// phase before this one leaves work behind.
	alone := sum(four())
	var slow sync.WaitGroup
	slow.Add(1)
	go func() {
		defer slow.Done()
		stream(stacks[1], src, time.Now().Add(*dur+time.Second), false, 20*time.Millisecond)
	}()
	beside := four()
	slow.Wait()
	alone = (alone + sum(four())) / 2
	r.SlowAloneGbps = alone * 8 / dur.Seconds() / 1e9
	r.SlowBesideGbps = sum(beside) * 8 / dur.Seconds() / 1e9
	r.SlowRatio = r.SlowBesideGbps / r.SlowAloneGbps
	r.SlowFlowJain, _ = fairness(beside)
}

// stream moves bytes on one flow until deadline (upload writes to a sink,
// download reads a source; pace > 0 reads 1 KiB per pace) and returns
// how many.
func stream(dial dialFunc, addr string, deadline time.Time, upload bool, pace time.Duration) int64 {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return 0
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	var n int64
	buf := make([]byte, 128<<10)
	if pace > 0 {
		buf = buf[:1024]
	}
	for time.Now().Before(deadline) {
		var k int
		if upload {
			k, err = c.Write(buf)
		} else {
			k, err = c.Read(buf)
		}
		n += int64(k)
		if err != nil {
			break
		}
		if pace > 0 {
			time.Sleep(pace) // the slow reader's pace is what it measures
		}
	}
	return n
}

// fairness is Jain's index and min/median of v.
func fairness(v []float64) (jain, minOverMed float64) {
	var s, s2 float64
	for _, x := range v {
		s += x
		s2 += x * x
	}
	if s2 == 0 {
		return 0, 0
	}
	jain = s * s / (float64(len(v)) * s2)
	if med := median(v); med > 0 {
		minOverMed = slices.Min(v) / med
	}
	return jain, minOverMed
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// procMiB reads a VmRSS/VmHWM line of /proc/pid/status.
func procMiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// procCPU is a process's user+system CPU seconds (clock ticks of 100 Hz).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return math.NaN()
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseFloat(fields[11], 64)
	st, _ := strconv.ParseFloat(fields[12], 64)
	return (ut + st) / 100
}

// clientChild runs one TUN client as its own process inside the
// workstation namespace (key 0, over UDP), downloading in bulk, and reads
// the RSS it reports.
func clientChild(topo *dptopo.Topology) (rss, hwm, gbps float64) {
	self, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := topo.WS.Command(context.Background(), self, "-client-child", "-duration", dur.String(), "-gateway-key", topo.GatewayKey.PublicKey().String())
	cmd.Env = append(os.Environ(), "BRIDGETUN_BENCH_KEY="+topo.ClientKeys[0].String())
	cmd.Stderr = os.Stderr
	b, err := cmd.Output()
	if err != nil {
		log.Fatalf("client child: %v", err)
	}
	var res struct{ RSS, HWM, Gbps float64 }
	if err := json.Unmarshal(b, &res); err != nil {
		log.Fatalf("client child: %v: %q", err, b)
	}
	return res.RSS, res.HWM, res.Gbps
}

// runClientChild is the child: a TUN client downloading from the source
// server for -duration, then its own RSS as JSON on stdout.
func runClientChild() {
	client.TuneGC() // as `bridgetun up` does
	key, err := tunnel.ParseKey(os.Getenv("BRIDGETUN_BENCH_KEY"))
	if err != nil {
		log.Fatalf("client child: key: %v", err)
	}
	gw, err := tunnel.ParseKey(*childGW)
	if err != nil {
		log.Fatalf("client child: gateway key: %v", err)
	}
	c, err := client.Start(client.Config{
		PrivateKey: key, Addr: netip.MustParsePrefix(dptopo.ClientAddrs[0]), GatewayKey: gw,
		Routes: []netip.Prefix{netip.MustParsePrefix("10.200.2.0/24"), netip.MustParsePrefix(dptopo.GatewayTun + "/32")},
		Mode:   client.ModeTUN, Transport: client.TransportUDP, MTU: 1420,
		GatewayEndpoint: fmt.Sprintf("%s:%d", dptopo.GatewayWSIP, dptopo.UDPPort),
	})
	if err != nil {
		log.Fatalf("client child: start: %v", err)
	}
	defer c.Close()
	var d net.Dialer
	deadline := time.Now().Add(*dur)
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.Add(stream(d.DialContext, net.JoinHostPort(dptopo.SvcIP, "5003"), deadline, false, 0))
		}()
	}
	wg.Wait()
	pid := os.Getpid()
	rss, _ := procMiB(pid, "VmRSS")
	hwm, _ := procMiB(pid, "VmHWM")
	_ = json.NewEncoder(os.Stdout).Encode(map[string]float64{"RSS": rss, "HWM": hwm, "Gbps": float64(n.Load()) * 8 / dur.Seconds() / 1e9})
}
