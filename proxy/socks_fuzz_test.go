package proxy

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// FuzzSOCKS drives a real SOCKS5 listener with arbitrary bytes. The first
// byte picks the server: even = no authentication, odd = username/password
// (alice/s3cret). Invariants: the server finishes (answers and closes once
// the client half-closes) within the deadline; what it answers is a valid
// SOCKS5 exchange; with authentication on, it dials nothing unless the
// input carried the right credentials.
func FuzzSOCKS(f *testing.F) {
	creds := []byte{userPassVersion, byte(len(fuzzUser))}
	creds = append(append(creds, fuzzUser...), byte(len(fuzzPass)))
	creds = append(creds, fuzzPass...)
	connect := func(addr ...byte) []byte { return append([]byte{5, cmdConnect, 0}, addr...) }
	ipv4 := []byte{atypIPv4, 10, 96, 0, 21, 0, 7}
	testkit.Seeds(f,
		cat([]byte{0, 5, 1, 0}, connect(ipv4...), []byte("ping")),                           // CONNECT 10.96.0.21:7
		cat([]byte{0, 5, 2, 0, 2}, connect(domainAddr("echo", 7)...), []byte("hello")),      // CONNECT echo:7
		cat([]byte{0, 5, 1, 0}, connect([]byte{atypIPv6, 0xfd, 16: 0x21, 17: 0, 18: 7}...)), // CONNECT [fd00::21]:7
		cat([]byte{0, 5, 1, 0}, connect(domainAddr("nope.example", 443)...)),                // unresolvable
		cat([]byte{0, 5, 1, 0}, connect(atypIPv4, 127, 0, 0, 1, 0, 22)),                     // denied (loopback)
		cat([]byte{0, 5, 1, 0}, []byte{5, cmdUDPAssociate, 0, atypIPv4, 0, 0, 0, 0, 0, 0}),  // UDP ASSOCIATE
		cat([]byte{0, 5, 1, 0}, []byte{5, cmdBind, 0}, ipv4),                                // BIND: not supported
		cat([]byte{0, 5, 1, 0}, []byte{5, cmdConnect, 0, 9, 1, 2}),                          // bad ATYP
		cat([]byte{1, 5, 1, 2}, creds, connect(domainAddr("api.shop.svc", 7)...), []byte("x")),
		cat([]byte{1, 5, 1, 2}, []byte{1, 5}, []byte("alice"), []byte{5}, []byte("wrong"), connect(ipv4...)),
		cat([]byte{1, 5, 1, 0}, connect(ipv4...)),              // no credentials offered
		cat([]byte{1, 5, 1, 2}, []byte{1, 255}, []byte("ali")), // username cut short
		[]byte{0, 4, 1, 0, 1, 0, 0, 80, 10, 96, 0, 21, 0},      // SOCKS4
		[]byte{0, 5, 255}, // methods cut short
		[]byte("\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte{},
	)
	servers := [2]*fuzzProxy{newFuzzProxy(f, false), newFuzzProxy(f, true)}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		p := servers[data[0]&1]
		in := data[1:]
		before := p.dials.Load()
		out := exchange(t, p.socks, in)
		dialled := p.dials.Load() > before
		if p.srv.authRequired() && dialled && !bytes.Contains(in, creds) {
			t.Fatalf("server with credentials dialled for input %q without them", in)
		}
		checkSOCKSAnswer(t, p.srv.authRequired(), in, out)
	})
}

// checkSOCKSAnswer checks out is a SOCKS5 method reply, then (with
// authentication) an RFC 1929 status, then a request reply whose bound
// address parses; after a successful CONNECT the rest is relayed data.
func checkSOCKSAnswer(t *testing.T, auth bool, in, out []byte) {
	t.Helper()
	if len(out) == 0 {
		return
	}
	want := byte(methodNoAuth)
	if auth {
		want = methodUserPass
	}
	if len(out) < 2 || out[0] != socksVersion || (out[1] != want && out[1] != methodNoAcceptable) {
		t.Fatalf("method reply: got % x, want 05 %02x (or 05 ff) for input %q", out[:min(len(out), 2)], want, in)
	}
	if out[1] == methodNoAcceptable {
		if len(out) != 2 {
			t.Fatalf("after 'no acceptable method' the server sent more: % x", out)
		}
		return
	}
	rest := out[2:]
	if auth && len(rest) > 0 {
		if len(rest) < 2 || rest[0] != userPassVersion || rest[1] > 1 {
			t.Fatalf("auth status: got % x, want 01 00 or 01 01", rest)
		}
		if rest[1] == 1 && len(rest) != 2 {
			t.Fatalf("after a refused login the server sent more: % x", rest)
		}
		rest = rest[2:]
	}
	if len(rest) == 0 {
		return
	}
	if len(rest) < 4 || rest[0] != socksVersion || rest[2] != 0 {
		t.Fatalf("request reply: got % x, want 05 REP 00 ATYP ...", rest)
	}
	if _, _, n, err := parseAddr(rest[3:]); err != nil {
		t.Fatalf("request reply % x: bound address: %v", rest, err)
	} else if rest[1] != repSucceeded && len(rest) != 3+n {
		t.Fatalf("after a failure reply the server sent more: % x", rest)
	}
}

// FuzzSOCKSUDPDatagram feeds arbitrary client datagrams to a UDP
// association's parser. Invariants: a datagram is forwarded only with
// FRAG 0 and a header that parses within the datagram; the bytes sent are
// exactly what follows the header, to the address it names (IP headers
// re-encode to the same bytes); nothing is sent for a denied destination.
func FuzzSOCKSUDPDatagram(f *testing.F) {
	hdr := func(addr ...byte) []byte { return append([]byte{0, 0, 0}, addr...) }
	testkit.Seeds(f,
		cat(hdr(atypIPv4, 10, 96, 0, 22, 0, 53), []byte("query")),
		cat(hdr(domainAddr("dns.kube-system.svc", 53)...), []byte("q")),
		cat(hdr([]byte{atypIPv6, 0xfd, 16: 0x22, 17: 0, 18: 53}...), []byte("v6")),
		cat(hdr(atypIPv4, 10, 96, 0, 66, 0, 53), []byte("denied")),
		cat(hdr(atypIPv4, 127, 0, 0, 1, 0, 53), []byte("loopback")),
		cat([]byte{0, 0, 1, atypIPv4, 10, 96, 0, 22, 0, 53}, []byte("fragment")),
		hdr(atypDomain, 40, 'a'),
		hdr(atypIPv4, 10, 96),
		hdr(7, 1, 2, 3),
		[]byte{0, 0},
	)
	s, err := New(Config{
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			return newRecordConn(address), nil
		},
		Resolve: fuzzResolve,
		Deny: func(a netip.Addr) bool {
			return a.IsLoopback() || a == netip.MustParseAddr("10.96.0.66")
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, b []byte) {
		a := &udpAssoc{s: s, dests: map[netip.AddrPort]net.Conn{}}
		a.forward(b)
		a.mu.Lock()
		dests := a.dests
		a.mu.Unlock()
		defer func() {
			for _, d := range dests {
				d.Close()
			}
			a.wg.Wait()
		}()
		if len(dests) > 1 {
			t.Fatalf("one datagram opened %d destinations", len(dests))
		}
		for dst, d := range dests {
			rc := d.(*recordConn)
			if len(b) < 4 || b[2] != 0 {
				t.Fatalf("datagram % x (short or fragmented) was forwarded", b)
			}
			host, port, n, err := parseAddr(b[3:])
			if err != nil {
				t.Fatalf("datagram % x with a bad header was forwarded to %s", b, dst)
			}
			if 3+n > len(b) {
				t.Fatalf("header length %d runs past the %d-byte datagram", n, len(b))
			}
			if dst.Port() != port {
				t.Fatalf("sent to port %d, header says %d", dst.Port(), port)
			}
			if b[3] != atypDomain {
				ip := netip.MustParseAddr(host)
				if dst.Addr() != ip.Unmap() {
					t.Fatalf("sent to %s, header says %s", dst, host)
				}
				if !ip.Is4In6() {
					if re := appendAddr(nil, dst); !bytes.Equal(re, b[3:3+n]) {
						t.Fatalf("header % x re-encodes as % x", b[3:3+n], re)
					}
				}
			}
			if s.cfg.Deny(dst.Addr()) {
				t.Fatalf("sent to denied %s", dst)
			}
			if got, want := rc.written(), b[3+n:]; !bytes.Equal(got, want) {
				t.Fatalf("payload: got % x, want % x", got, want)
			}
		}
	})
}

// recordConn is a destination conn that keeps what is written to it; its
// Read blocks until Close.
type recordConn struct {
	net.Conn // nil: only the methods below are used
	addr     string
	mu       sync.Mutex
	buf      bytes.Buffer
	done     chan struct{}
	once     sync.Once
}

func newRecordConn(addr string) *recordConn {
	return &recordConn{addr: addr, done: make(chan struct{})}
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *recordConn) Read([]byte) (int, error) {
	<-c.done
	return 0, net.ErrClosed
}

func (c *recordConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *recordConn) SetDeadline(time.Time) error { return nil }

func (c *recordConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

// cat joins byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
