package dnsproxy

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeWriter is a dns.ResponseWriter that records the reply.
type fakeWriter struct {
	remote net.Addr
	msg    *dns.Msg
}

func (w *fakeWriter) LocalAddr() net.Addr       { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *fakeWriter) RemoteAddr() net.Addr      { return w.remote }
func (w *fakeWriter) WriteMsg(m *dns.Msg) error { w.msg = m; _, err := m.Pack(); return err }
func (w *fakeWriter) Write(b []byte) (int, error) {
	return len(b), nil
}
func (w *fakeWriter) Close() error        { return nil }
func (w *fakeWriter) TsigStatus() error   { return nil }
func (w *fakeWriter) TsigTimersOnly(bool) {}
func (w *fakeWriter) Hijack()             {}

// FuzzHandler feeds arbitrary bytes that unpack as a DNS message to the
// handler: it must always write a packable reply and never panic.
func FuzzHandler(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"frontend.", dns.TypeA}, {"example.com.", dns.TypeAAAA}, {"x.bt.svc.", dns.TypeAAAA}, {ListenerName, dns.TypeA}, {".", dns.TypeNS}} {
		m := new(dns.Msg).SetQuestion(q.name, q.qtype)
		m.SetEdns0(1232, true)
		b, _ := m.Pack()
		f.Add(b, true)
	}
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, false)
	cluster := startFake(f, clusterMux(f))
	upstream := startFake(f, upstreamMux(f))
	s := startProxy(f, Config{
		ClusterDNS:      []string{cluster.addr},
		Upstreams:       []string{upstream.addr},
		Services:        NewStaticServices("frontend"),
		UpstreamTimeout: 300 * time.Millisecond,
	})
	f.Fuzz(func(t *testing.T, b []byte, udp bool) {
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			return // the server answers unparseable packets itself (FORMERR) before the handler
		}
		w := &fakeWriter{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
		if udp {
			w.remote = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
		}
		s.ServeDNS(w, m)
		if w.msg == nil {
			t.Fatalf("no reply to %v", m)
		}
		if w.msg.Id != m.Id || !w.msg.Response {
			t.Errorf("reply id=%d response=%v, want id %d response", w.msg.Id, w.msg.Response, m.Id)
		}
	})
}

// TestMalformedOverWire sends junk to the real listener: short packets
// and garbage get FORMERR or nothing from miekg's accept func, and the
// server keeps answering afterwards.
func TestMalformedOverWire(t *testing.T) {
	upstream := startFake(t, upstreamMux(t))
	s := startProxy(t, Config{Upstreams: []string{upstream.addr}})
	addr := s.Addrs()[0].String()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	twoQ := new(dns.Msg).SetQuestion("a.", dns.TypeA)
	twoQ.Question = append(twoQ.Question, twoQ.Question[0])
	twoQb, _ := twoQ.Pack()
	for _, junk := range [][]byte{{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, make([]byte, 600), twoQb} {
		c.Write(junk)
	}
	if r, _ := query(t, addr, "udp", "example.com.", dns.TypeA, 0); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after junk: rcode %s", dns.RcodeToString[r.Rcode])
	}
}
