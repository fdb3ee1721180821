package main

import (
	"bufio"
	"context"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bridgetun/bridgetun/internal/dptopo"
)

// PhaseMem is the gateway's memory during one phase: its RSS peak, the Go
// runtime's view at that peak and the runtime's own peaks. Heap in use
// close to the RSS peak means live or not-yet-collected heap; a heap goal
// far above what is live means GC lag (GOMEMLIMIT helps); stacks are
// goroutines (per flow).
type PhaseMem struct {
	Phase           string
	RSSMiB          float64
	AtPeak          GoMem // the last runtime sample before the RSS peak
	HeapInuseMaxMiB float64
	StackMaxMiB     float64
}

// GoMem is one sample of the gateway's Go runtime metrics.
type GoMem struct {
	HeapInuseMiB float64 // go_memstats_heap_inuse_bytes
	HeapGoalMiB  float64 // go_memstats_next_gc_bytes
	StackMiB     float64 // go_memstats_stack_inuse_bytes
	Goroutines   int
}

// sampler reads the gateway's RSS every 20 ms and its runtime metrics
// every 200 ms (fetching them costs the gateway a little CPU) until stop.
type sampler struct {
	topo *dptopo.Topology
	pid  int
	done chan struct{}
	wg   sync.WaitGroup

	snapshot time.Duration // > 0: SIGUSR1 the gateway this long into each phase (heap snapshot)
	sent     atomic.Int32  // snapshots asked for

	mu     sync.Mutex
	phases []PhaseMem
	last   GoMem
	timer  *time.Timer
}

func startSampler(topo *dptopo.Topology, pid int, snapshot time.Duration) *sampler {
	s := &sampler{topo: topo, pid: pid, done: make(chan struct{}), snapshot: snapshot}
	s.wg.Add(2)
	go s.loop(20*time.Millisecond, s.rss)
	go s.loop(200*time.Millisecond, s.runtime)
	return s
}

// phase starts a new phase; samples from now on count for it.
func (s *sampler) phase(name string) {
	s.mu.Lock()
	s.phases = append(s.phases, PhaseMem{Phase: name})
	if s.snapshot > 0 {
		if s.timer != nil {
			s.timer.Stop()
		}
		s.timer = time.AfterFunc(s.snapshot, func() {
			if p, err := os.FindProcess(s.pid); err == nil && p.Signal(syscall.SIGUSR1) == nil {
				log.Printf("gateway heap snapshot %d (the agent's .N files): %s", s.sent.Add(1), name)
			}
		})
	}
	s.mu.Unlock()
}

// stop ends sampling and returns every phase.
func (s *sampler) stop() []PhaseMem {
	close(s.done)
	s.wg.Wait()
	s.mu.Lock()
	if s.timer != nil {
		s.timer.Stop()
	}
	s.mu.Unlock()
	return s.phases
}

func (s *sampler) loop(every time.Duration, sample func()) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			sample()
		}
	}
}

func (s *sampler) rss() {
	v, err := procMiB(s.pid, "VmRSS")
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.cur(); p != nil && v > p.RSSMiB {
		p.RSSMiB, p.AtPeak = v, s.last
	}
}

func (s *sampler) runtime() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	text, err := s.topo.GatewayMetrics(ctx)
	if err != nil {
		return
	}
	var m GoMem
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_memstats_heap_inuse_bytes":
			m.HeapInuseMiB = f / (1 << 20)
		case "go_memstats_next_gc_bytes":
			m.HeapGoalMiB = f / (1 << 20)
		case "go_memstats_stack_inuse_bytes":
			m.StackMiB = f / (1 << 20)
		case "go_goroutines":
			m.Goroutines = int(f)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = m
	if p := s.cur(); p != nil {
		p.HeapInuseMaxMiB = max(p.HeapInuseMaxMiB, m.HeapInuseMiB)
		p.StackMaxMiB = max(p.StackMaxMiB, m.StackMiB)
	}
}

// cur is the phase being sampled (nil before the first); s.mu held.
func (s *sampler) cur() *PhaseMem {
	if len(s.phases) == 0 {
		return nil
	}
	return &s.phases[len(s.phases)-1]
}
