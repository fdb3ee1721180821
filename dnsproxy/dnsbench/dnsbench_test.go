package dnsbench

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/dnsproxy"
	"github.com/miekg/dns"
)

// fakeResolver answers every A query with one record (TTL ttl) on a
// loopback UDP+TCP port with its own ServeMux.
func fakeResolver(t testing.TB, ttl uint32) string {
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(10, 96, 0, 20)}}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	ready := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(ready) }
	go srv.ActivateAndServe()
	<-ready
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// setup starts a cluster resolver, an upstream and the proxy between
// them; ttl 0 makes every query a cache miss.
func setup(t testing.TB, ttl uint32) (proxy, upstream string) {
	cluster := fakeResolver(t, ttl)
	upstream = fakeResolver(t, ttl)
	s, err := dnsproxy.New(dnsproxy.Config{
		Listen:     []string{"127.0.0.1:0"},
		Namespace:  "bt",
		Services:   dnsproxy.NewStaticServices("frontend"),
		ClusterDNS: []string{cluster},
		Upstreams:  []string{upstream},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.Addrs()[0].String(), upstream
}

var names = []string{"frontend.bt.svc.cluster.local.", "frontend.", "example.com."}

func TestRunSmall(t *testing.T) {
	proxy, upstream := setup(t, 0)
	r := Run(context.Background(), proxy, upstream, 200, time.Second, names)
	t.Log("\n" + r.String())
	if r.Dropped != 0 {
		t.Errorf("dropped %d", r.Dropped)
	}
	for _, n := range r.Names {
		if n.Server.Answered == 0 || n.Direct.Answered == 0 {
			t.Errorf("%s: answered %d via proxy, %d direct", n.Name, n.Server.Answered, n.Direct.Answered)
		}
	}
}

// BenchmarkLoad is the benchmark: 2,000 q/s for 10 s, with the
// cache (TTL 30) and without (TTL 0), against the upstream queried directly
// in the same run. Run it once: make bench-dns (-benchtime 1x);
// BRIDGETUN_DNSBENCH_QPS overrides the rate.
func BenchmarkLoad(b *testing.B) {
	qps := 2000
	if v, err := strconv.Atoi(os.Getenv("BRIDGETUN_DNSBENCH_QPS")); err == nil {
		qps = v
	}
	for range b.N {
		for _, ttl := range []uint32{30, 0} {
			proxy, upstream := setup(b, ttl)
			r := Run(context.Background(), proxy, upstream, qps, 10*time.Second, names)
			b.Logf("upstream TTL %d:\n%s", ttl, r)
			if r.Dropped != 0 {
				b.Errorf("TTL %d: dropped %d", ttl, r.Dropped)
			}
		}
	}
}
