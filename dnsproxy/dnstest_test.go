package dnsproxy

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/miekg/dns"
)

// fakeDNS is a real miekg/dns server on 127.0.0.1:0 (UDP and TCP on the
// same port) with its own ServeMux, counting the queries it sees.
type fakeDNS struct {
	addr    string
	queries atomic.Int64
}

func startFake(t testing.TB, mux *dns.ServeMux) *fakeDNS {
	t.Helper()
	f := &fakeDNS{}
	counting := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		f.queries.Add(1)
		mux.ServeDNS(w, r)
	})
	pc, ln, err := listenPair(context.Background(), &net.ListenConfig{}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: counting}, {Listener: ln, Handler: counting}} {
		ready := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(ready) }
		go srv.ActivateAndServe()
		<-ready
		t.Cleanup(func() { srv.Shutdown() })
	}
	f.addr = pc.LocalAddr().String()
	return f
}

// mustRR parses a record for fake servers; it panics on a typo.
func mustRR(s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return r
}

func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("NewRR(%q): %v", s, err)
	}
	return r
}

// clusterMux answers like kube-dns for namespace bt.
func clusterMux(t testing.TB) *dns.ServeMux {
	mux := dns.NewServeMux()
	soa := mustRR("cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 30")
	mux.HandleFunc("cluster.local.", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.Authoritative = true
		q := r.Question[0]
		switch {
		case q.Name == "frontend.bt.svc.cluster.local." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{mustRR("frontend.bt.svc.cluster.local. 5 IN A 10.96.0.20")}
		case q.Name == "10-244-1-7.bt.pod.cluster.local." && q.Qtype == dns.TypeA:
			m.Answer = []dns.RR{mustRR("10-244-1-7.bt.pod.cluster.local. 5 IN A 10.244.1.7")}
		case q.Name == "big.bt.svc.cluster.local.":
			for i := range 100 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(10, 96, 1, byte(i))})
			}
			if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
				m.Truncate(dns.MinMsgSize) // like kube-dns: TC over UDP, the client retries over TCP
			}
		case q.Name == "ext.bt.svc.cluster.local.":
			m.Answer = []dns.RR{mustRR("ext.bt.svc.cluster.local. 5 IN CNAME example.com.")}
		case q.Name == "frontend.bt.svc.cluster.local.":
			m.Ns = []dns.RR{soa}
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa}
		}
		w.WriteMsg(m)
	})
	return mux
}

// upstreamMux answers like a public resolver.
func upstreamMux(t testing.TB) *dns.ServeMux {
	mux := dns.NewServeMux()
	soa := mustRR("com. 60 IN SOA a.gtld-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 60")
	mux.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.RecursionAvailable = true
		q := r.Question[0]
		switch q.Name {
		case "example.com.":
			if q.Qtype == dns.TypeA {
				m.Answer = []dns.RR{mustRR("example.com. 300 IN A 93.184.216.34")}
			} else {
				m.Ns = []dns.RR{soa}
			}
		case "nottl.example.":
			m.Answer = []dns.RR{mustRR("nottl.example. 0 IN A 192.0.2.1")}
		case "big.example.":
			for i := range 100 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i))})
			}
		case "loop.example.":
			m.Answer = []dns.RR{mustRR("loop.example. 60 IN CNAME loop2.example."), mustRR("loop2.example. 60 IN CNAME loop.example.")}
		case "chain.example.":
			name := "chain.example."
			for i := range 200 {
				next := "c" + string(rune('a'+i%26)) + dns.Fqdn(itoa(i)) + "example."
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: next})
				name = next
			}
		default:
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa}
		}
		w.WriteMsg(m)
	})
	return mux
}

func itoa(i int) string {
	return string(rune('0'+i/100%10)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}

// deadAddr is a UDP port that never answers (bound, never read).
func deadAddr(t testing.TB) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// startProxy starts a Server with cfg defaults for namespace bt.
func startProxy(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "bt"
	}
	if cfg.Log == nil {
		if tt, ok := t.(*testing.T); ok {
			cfg.Log = testkit.Logger(tt)
		}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func query(t testing.TB, addr, network, name string, qtype uint16, edns uint16) (*dns.Msg, time.Duration) {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	start := time.Now()
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r, time.Since(start)
}
