// Package benchutil holds what the cluster benchmarks share: testapp's sink
// upload (8-byte length, the bytes, a "N sha256" reply that must match),
// HTTP latency on one keep-alive connection, and finding a pod.
package benchutil

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DialFunc dials like net.Dialer.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Upload sends n bytes to the sink at addr and returns MB/s; the sink's
// checksum must match what was sent.
func Upload(ctx context.Context, dial DialFunc, addr string, n int64) (float64, error) {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute)) // a stuck path is an error, not a hang
	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for sent := int64(0); sent < n; {
		chunk := buf[:min(int64(len(buf)), n-sent)]
		h.Write(chunk)
		if _, err := c.Write(chunk); err != nil {
			return 0, err
		}
		sent += int64(len(chunk))
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("sink reply: %w", err)
	}
	if want := fmt.Sprintf("%d %x", n, h.Sum(nil)); strings.TrimSpace(reply) != want {
		return 0, fmt.Errorf("sink got %q, want %q", strings.TrimSpace(reply), want)
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}

// Latency times count sequential GETs of url/healthz on one keep-alive
// connection (after 20 warm-up requests) and returns p50 and p99 in ms.
func Latency(client *http.Client, url string, count int, errs *int) (p50, p99 float64) {
	var samples []float64
	for i := range count + 20 {
		t0 := time.Now()
		resp, err := client.Get(url + "/healthz")
		if err != nil {
			*errs++
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i >= 20 {
			samples = append(samples, float64(time.Since(t0).Microseconds())/1e3)
		}
	}
	if len(samples) == 0 {
		return 0, 0
	}
	slices.Sort(samples)
	return samples[len(samples)/2], samples[len(samples)*99/100]
}

// Sample is one path's measurement.
type Sample struct {
	MBps   float64 `json:"upload_MBps"`
	P50ms  float64 `json:"http_p50_ms"`
	P99ms  float64 `json:"http_p99_ms"`
	Errors int     `json:"errors"`
}

// Measure uploads n bytes to sink reps times (median kept) and times rr
// GETs of httpAddr on one keep-alive connection, all dialled with dial.
func Measure(ctx context.Context, name string, dial DialFunc, sink, httpAddr string, n int64, reps, rr int) Sample {
	log.Printf("measuring %s", name)
	var s Sample
	var speeds []float64
	for range reps {
		v, err := Upload(ctx, dial, sink, n)
		if err != nil {
			log.Printf("%s upload: %v", name, err)
			s.Errors++
			continue
		}
		speeds = append(speeds, v)
	}
	s.MBps = Median(speeds)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 1}}
	s.P50ms, s.P99ms = Latency(hc, "http://"+httpAddr, rr, &s.Errors)
	return s
}

// Median returns the median of xs (0 if empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// PodOf returns a running, not terminating pod matching selector in ns.
func PodOf(kubectl, kubeconfig, ns, selector string) (name, ip string) {
	b, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "-n", ns, "get", "pods", "-l", selector, "-o", "json").Output()
	if err != nil {
		return "", ""
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Status struct {
				Phase string `json:"phase"`
				PodIP string `json:"podIP"`
			} `json:"status"`
		} `json:"items"`
	}
	if json.Unmarshal(b, &list) != nil {
		return "", ""
	}
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp == nil && p.Status.Phase == "Running" {
			return p.Metadata.Name, p.Status.PodIP
		}
	}
	return "", ""
}

// pullFlag marks a sink request for a download (testapp's runSink).
const pullFlag = 1 << 63

// Download asks the sink at addr for n bytes and returns MB/s; the bytes must
// match the SHA-256 the sink sends after them.
func Download(ctx context.Context, dial DialFunc, addr string, n int64) (float64, error) {
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	start := time.Now()
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n)|pullFlag)
	if _, err := c.Write(hdr[:]); err != nil {
		return 0, err
	}
	br := bufio.NewReaderSize(c, 256<<10)
	h := sha256.New()
	if got, err := io.CopyN(h, br, n); err != nil {
		return 0, fmt.Errorf("download: %d of %d bytes: %w", got, n, err)
	}
	secs := time.Since(start).Seconds()
	trailer, err := br.ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("sink trailer: %w", err)
	}
	if want := fmt.Sprintf("%x", h.Sum(nil)); strings.TrimSpace(trailer) != want {
		return 0, fmt.Errorf("download corrupted: sink sent %q, got %q", strings.TrimSpace(trailer), want)
	}
	return float64(n) / secs / 1e6, nil
}

// Rate is a request/response measurement with some concurrent connections.
type Rate struct {
	Conns  int     `json:"conns"`
	RPS    float64 `json:"rps"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	Errors int     `json:"errors"`
}

// RequestRate runs conns clients, each GETting url/healthz over its own
// keep-alive connection for d (after 20 warm-up requests each), and returns
// the aggregate rate and latency percentiles.
func RequestRate(dial DialFunc, url string, conns int, d time.Duration) Rate {
	type res struct {
		lat  []float64
		errs int
	}
	out := make(chan res, conns)
	start := make(chan struct{})
	var deadline time.Time
	var warm sync.WaitGroup
	warm.Add(conns)
	for range conns {
		go func() {
			hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1}}
			defer hc.CloseIdleConnections()
			get := func() error {
				resp, err := hc.Get(url + "/healthz")
				if err != nil {
					return err
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				return resp.Body.Close()
			}
			var r res
			for range 20 {
				_ = get()
			}
			warm.Done()
			<-start
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := get(); err != nil {
					r.errs++
					continue
				}
				r.lat = append(r.lat, float64(time.Since(t0).Microseconds())/1e3)
			}
			out <- r
		}()
	}
	warm.Wait() // every connection is open and warm before the clock starts
	deadline = time.Now().Add(d)
	close(start)
	var all []float64
	rate := Rate{Conns: conns}
	for range conns {
		r := <-out
		all = append(all, r.lat...)
		rate.Errors += r.errs
	}
	rate.RPS = float64(len(all)) / d.Seconds()
	if len(all) > 0 {
		slices.Sort(all)
		rate.P50ms, rate.P99ms = all[len(all)/2], all[len(all)*99/100]
	}
	return rate
}

// CPUSeconds returns the user+system CPU time the processes pids have used
// (Linux /proc; clock ticks at the kernel's USER_HZ of 100). Gone processes
// count 0.
func CPUSeconds(pids ...int) float64 {
	var total float64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state is field 3,
		// utime 14, stime 15.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (u + st) / 100
	}
	return total
}

// PIDsNamed returns the pids whose /proc/PID/comm is one of names.
func PIDsNamed(names ...string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && slices.Contains(names, strings.TrimSpace(string(comm))) {
			pids = append(pids, pid)
		}
	}
	return pids
}
