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
	"os/exec"
	"slices"
	"strings"
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
