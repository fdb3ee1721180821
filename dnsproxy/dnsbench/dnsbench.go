// Package dnsbench is an open-loop DNS load generator: it sends queries
// at a fixed rate to a resolver under test and, in the same run, to a
// baseline resolver, and reports latency percentiles per name and the
// queries that got no answer.
package dnsbench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Timeout is how long a query may go unanswered before it counts as dropped.
const Timeout = 2 * time.Second

// Stats summarise one target's answers for one name.
type Stats struct {
	Sent, Answered, Dropped int
	Rcodes                  map[string]int
	P50, P99, Max           time.Duration
}

// NameResult is one name, asked of the server under test and of the
// direct baseline.
type NameResult struct {
	Name   string
	Server Stats
	Direct Stats // zero if no direct address was given
}

// Result is a whole run.
type Result struct {
	QPS      int           // per target
	Duration time.Duration // sending time
	Names    []NameResult  // in the order given
	Dropped  int           // over all names and both targets
}

// Run sends qps A queries per second for d to server and, when direct is
// not "", the same queries at the same rate to direct, cycling through
// names. It is open loop: a slow answer never delays the next send.
// Every query is waited for (up to Timeout) before Run returns.
func Run(ctx context.Context, server, direct string, qps int, d time.Duration, names []string) Result {
	if qps <= 0 || len(names) == 0 {
		return Result{QPS: qps, Duration: d}
	}
	type sample struct {
		name   int
		direct bool
		rtt    time.Duration
		rcode  int
		err    error
	}
	total := int(d.Seconds() * float64(qps))
	samples := make(chan sample, 1024)
	var wg sync.WaitGroup
	ask := func(i int, addr string, isDirect bool) {
		defer wg.Done()
		m := new(dns.Msg).SetQuestion(dns.Fqdn(names[i]), dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: Timeout}
		r, rtt, err := c.ExchangeContext(ctx, m, addr)
		s := sample{name: i, direct: isDirect, rtt: rtt, err: err}
		if err == nil {
			s.rcode = r.Rcode
		}
		samples <- s
	}
	type acc struct {
		rtts   []time.Duration
		sent   int
		drop   int
		rcodes map[string]int
	}
	accs := make([][2]acc, len(names))
	for i := range accs {
		accs[i][0].rcodes, accs[i][1].rcodes = map[string]int{}, map[string]int{}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s := range samples {
			k := 0
			if s.direct {
				k = 1
			}
			a := &accs[s.name][k]
			a.sent++
			if s.err != nil {
				a.drop++
				continue
			}
			a.rtts = append(a.rtts, s.rtt)
			a.rcodes[dns.RcodeToString[s.rcode]]++
		}
	}()
	interval := time.Second / time.Duration(qps)
	start := time.Now()
	for i := 0; i < total && ctx.Err() == nil; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		n := i % len(names)
		wg.Add(1)
		go ask(n, server, false)
		if direct != "" {
			wg.Add(1)
			go ask(n, direct, true)
		}
	}
	sendTime := time.Since(start)
	wg.Wait()
	close(samples)
	<-done
	res := Result{QPS: qps, Duration: sendTime}
	for i, name := range names {
		nr := NameResult{Name: name}
		for k, st := range []*Stats{&nr.Server, &nr.Direct} {
			a := accs[i][k]
			slices.Sort(a.rtts)
			*st = Stats{Sent: a.sent, Answered: len(a.rtts), Dropped: a.drop, Rcodes: a.rcodes,
				P50: pct(a.rtts, 0.50), P99: pct(a.rtts, 0.99)}
			if len(a.rtts) > 0 {
				st.Max = a.rtts[len(a.rtts)-1]
			}
			res.Dropped += a.drop
		}
		res.Names = append(res.Names, nr)
	}
	return res
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

// String renders r as a table: per name, p50/p99 via the server and
// directly, and the difference.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d q/s per target for %v, dropped %d\n", r.QPS, r.Duration.Round(time.Millisecond), r.Dropped)
	fmt.Fprintf(&b, "%-34s %8s %8s %8s %8s %8s %8s %s\n", "name", "p50", "p99", "max", "d.p50", "d.p99", "+p50", "rcodes")
	for _, n := range r.Names {
		s, d := n.Server, n.Direct
		extra := "-"
		if d.Answered > 0 {
			extra = us(s.P50 - d.P50)
		}
		fmt.Fprintf(&b, "%-34s %8s %8s %8s %8s %8s %8s %v sent=%d dropped=%d\n", n.Name, us(s.P50), us(s.P99), us(s.Max), us(d.P50), us(d.P99), extra, s.Rcodes, s.Sent, s.Dropped+d.Dropped)
	}
	return b.String()
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond)) }
