package dnsproxy

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkResolve measures one UDP query end to end over loopback:
// through the proxy (cached and uncached, cluster and foreign) and
// straight to the upstream as the baseline. The 2,000 q/s × 10 s
// open-loop run lives in dnsbench.
func BenchmarkResolve(b *testing.B) {
	cluster := startFake(b, clusterMux(b))
	upstream := startFake(b, upstreamMux(b))
	cached := startProxy(b, Config{ClusterDNS: []string{cluster.addr}, Upstreams: []string{upstream.addr}, Services: NewStaticServices("frontend")})
	uncached := startProxy(b, Config{ClusterDNS: []string{cluster.addr}, Upstreams: []string{upstream.addr}, Services: NewStaticServices("frontend"), CacheSize: -1})
	tests := []struct {
		name, addr, qname string
	}{
		{"direct/foreign", upstream.addr, "example.com."},
		{"proxy/foreign/uncached", uncached.Addrs()[0].String(), "example.com."},
		{"proxy/foreign/cached", cached.Addrs()[0].String(), "example.com."},
		{"proxy/cluster/uncached", uncached.Addrs()[0].String(), "frontend."},
		{"proxy/cluster/cached", cached.Addrs()[0].String(), "frontend."},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			c, err := net.Dial("udp", tt.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			co := &dns.Conn{Conn: c}
			m := new(dns.Msg).SetQuestion(tt.qname, dns.TypeA)
			for b.Loop() {
				co.SetDeadline(time.Now().Add(2 * time.Second))
				if err := co.WriteMsg(m); err != nil {
					b.Fatal(err)
				}
				r, err := co.ReadMsg()
				if err != nil || len(r.Answer) != 1 {
					b.Fatalf("got %v, %v", r, err)
				}
			}
		})
	}
}
