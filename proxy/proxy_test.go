package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	xproxy "golang.org/x/net/proxy"
)

// Test topology: the proxy only reaches destinations through env.dial,
// which maps fake cluster addresses to real loopback listeners.
//
//	client ──► proxy (127.0.0.1:0) ──Config.Dial──► 10.96.0.20:80 → HTTP server
//	                                               10.96.0.21:7  → TCP echo
//	                                               10.96.0.22:53 → UDP echo
//	                                               10.96.0.23:81 → closed port (refused)
//	Resolve: frontend → .20, echo → .21, dns → .22, closed → .23
//	Deny:    10.96.0.66
var (
	fakeHTTP   = netip.MustParseAddrPort("10.96.0.20:80")
	fakeEcho   = netip.MustParseAddrPort("10.96.0.21:7")
	fakeUDP    = netip.MustParseAddrPort("10.96.0.22:53")
	fakeClosed = netip.MustParseAddrPort("10.96.0.23:81")
	deniedIP   = netip.MustParseAddr("10.96.0.66")
	fakeV6Echo = netip.MustParseAddrPort("[fd00::21]:7")
)

type testEnv struct {
	routes map[netip.AddrPort]string // fake → real address
	names  map[string]netip.Addr
}

// newTestEnv starts the loopback backends. They are cleaned up after the
// test, so goroutine counts taken after newTestEnv exclude them.
func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	// HTTP server: reports the path and whether hop-by-hop headers leaked.
	hl := listen(t)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "frontend %s host=%s proxy-auth=%q", r.URL.Path, r.Host, r.Header.Get("Proxy-Authorization"))
	})}
	go hs.Serve(hl)
	t.Cleanup(func() { hs.Close() })

	el := listen(t)
	go func() {
		for {
			c, err := el.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c) // echo until EOF, then close: proves half-close
			}()
		}
	}()

	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			uc.WriteToUDPAddrPort(append([]byte("echo:"), buf[:n]...), from)
		}
	}()

	cl := listen(t)
	closedAddr := cl.Addr().String()
	cl.Close()

	return &testEnv{
		routes: map[netip.AddrPort]string{
			fakeHTTP:   hl.Addr().String(),
			fakeEcho:   el.Addr().String(),
			fakeV6Echo: el.Addr().String(),
			fakeUDP:    uc.LocalAddr().String(),
			fakeClosed: closedAddr,
		},
		names: map[string]netip.Addr{
			"frontend": fakeHTTP.Addr(),
			"echo":     fakeEcho.Addr(),
			"dns":      fakeUDP.Addr(),
			"closed":   fakeClosed.Addr(),
			"blocked":  deniedIP,
		},
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dial is Config.Dial: IP literals only, fake addresses mapped to real ones.
func (e *testEnv) dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("test dial %q: not an IP literal: %w", address, err)
	}
	real, ok := e.routes[ap]
	if !ok {
		return nil, fmt.Errorf("test dial %s: no route to host", address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, real)
}

func (e *testEnv) resolve(_ context.Context, host string) ([]netip.Addr, error) {
	a, ok := e.names[host]
	if !ok {
		return nil, fmt.Errorf("%s: no such host", host)
	}
	return []netip.Addr{a}, nil
}

func (e *testEnv) config(t *testing.T) Config {
	return Config{
		Dial:    e.dial,
		Resolve: e.resolve,
		Deny:    func(a netip.Addr) bool { return a == deniedIP },
		Log:     testkit.Logger(t),
	}
}

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSOCKSConnect(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		name       string
		user, pass string // server credentials
		auth       *xproxy.Auth
		dest       string
		wantErr    string // substring; "" = echo round trip works
	}{
		{name: "ipv4 no auth", dest: fakeEcho.String()},
		{name: "ipv6 no auth", dest: fakeV6Echo.String()},
		{name: "name resolved by proxy", dest: "echo:7"},
		{name: "user/pass accepted", user: "alice", pass: "s3cret", auth: &xproxy.Auth{User: "alice", Password: "s3cret"}, dest: "echo:7"},
		{name: "user/pass rejected", user: "alice", pass: "s3cret", auth: &xproxy.Auth{User: "alice", Password: "wrong"}, dest: "echo:7", wantErr: "authentication failed"},
		{name: "no credentials offered", user: "alice", pass: "s3cret", dest: "echo:7", wantErr: "no acceptable authentication methods"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := env.config(t)
			cfg.Username, cfg.Password = tt.user, tt.pass
			s := newServer(t, cfg)
			addr, err := s.ListenSOCKS("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var raw rawDialer
			d, err := xproxy.SOCKS5("tcp", addr.String(), tt.auth, &raw)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err = d.(xproxy.ContextDialer).DialContext(ctx, "tcp", tt.dest)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dial %s: got err %v, want %q", tt.dest, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("dial %s: %v", tt.dest, err)
			}
			defer raw.conn.Close()
			echoRoundTrip(t, raw.conn) // the SOCKS conn wraps it without CloseWrite
		})
	}
}

// rawDialer is the SOCKS client's forward dialer; it keeps the TCP conn to
// the proxy so tests can half-close it.
type rawDialer struct{ conn *net.TCPConn }

func (d *rawDialer) Dial(network, addr string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, addr)
}

func (d *rawDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.conn = c.(*net.TCPConn)
	}
	return c, err
}

// echoRoundTrip writes, half-closes and reads everything back: the echo
// server only closes after EOF, so this passes only if CloseWrite crosses
// the relay.
func echoRoundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	const msg = "hello through the tunnel"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q, want %q", got, msg)
	}
}

func TestSOCKSReplyCodes(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		name    string
		cmd     byte
		addr    []byte // ATYP DST.ADDR DST.PORT
		noRes   bool   // Config.Resolve = nil
		want    byte
		wantRes string // metrics result label, "" = not checked
	}{
		{name: "connect ok", cmd: cmdConnect, addr: appendAddr(nil, fakeEcho), want: repSucceeded, wantRes: resultOK},
		{name: "denied ip", cmd: cmdConnect, addr: appendAddr(nil, netip.AddrPortFrom(deniedIP, 80)), want: repNotAllowed, wantRes: resultDenied},
		{name: "denied by name", cmd: cmdConnect, addr: domainAddr("blocked", 80), want: repNotAllowed, wantRes: resultDenied},
		{name: "unknown name", cmd: cmdConnect, addr: domainAddr("nosuch", 80), want: repHostUnreachable, wantRes: resultUnresolved},
		{name: "names without resolver", cmd: cmdConnect, addr: domainAddr("echo", 7), noRes: true, want: repHostUnreachable, wantRes: resultUnresolved},
		{name: "refused", cmd: cmdConnect, addr: appendAddr(nil, fakeClosed), want: repConnRefused, wantRes: resultDialFailed},
		{name: "no route", cmd: cmdConnect, addr: appendAddr(nil, netip.MustParseAddrPort("10.96.9.9:80")), want: repHostUnreachable, wantRes: resultDialFailed},
		{name: "bind unsupported", cmd: cmdBind, addr: appendAddr(nil, fakeEcho), want: repCmdNotSupported},
		{name: "unknown command", cmd: 0x09, addr: appendAddr(nil, fakeEcho), want: repCmdNotSupported},
		{name: "bad address type", cmd: cmdConnect, addr: []byte{0x05, 1, 2, 3, 4, 0, 80}, want: repAddrNotSupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			cfg := env.config(t)
			cfg.Registerer = reg
			if tt.noRes {
				cfg.Resolve = nil
			}
			s := newServer(t, cfg)
			addr, err := s.ListenSOCKS("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			c := socksHandshake(t, addr.String())
			defer c.Close()
			c.Write(append([]byte{socksVersion, tt.cmd, 0}, tt.addr...))
			rep := make([]byte, 10)
			if _, err := io.ReadFull(c, rep); err != nil {
				t.Fatalf("read reply: %v", err)
			}
			if got := rep[1]; got != tt.want {
				t.Errorf("reply: got 0x%02x, want 0x%02x", got, tt.want)
			}
			if tt.wantRes != "" {
				if got := testutil.ToFloat64(s.metrics.connections.WithLabelValues("socks", tt.wantRes)); got != 1 {
					t.Errorf("bridgetun_proxy_connections_total{proto=socks,result=%s}: got %v, want 1", tt.wantRes, got)
				}
			}
		})
	}
}

func domainAddr(name string, port uint16) []byte {
	b := append([]byte{atypDomain, byte(len(name))}, name...)
	return binary.BigEndian.AppendUint16(b, port)
}

// socksHandshake connects and negotiates "no authentication".
func socksHandshake(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte{socksVersion, 1, methodNoAuth})
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil {
		t.Fatal(err)
	}
	if m != [2]byte{socksVersion, methodNoAuth} {
		t.Fatalf("method reply: got %v, want [5 0]", m)
	}
	return c
}

func TestSOCKSUDPAssociate(t *testing.T) {
	env := newTestEnv(t)
	s := newServer(t, env.config(t))
	addr, err := s.ListenSOCKS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctrl := socksHandshake(t, addr.String())
	defer ctrl.Close()
	ctrl.Write(append([]byte{socksVersion, cmdUDPAssociate, 0}, appendAddr(nil, netip.AddrPort{})...))
	rep := make([]byte, 10)
	if _, err := io.ReadFull(ctrl, rep); err != nil {
		t.Fatal(err)
	}
	if rep[1] != repSucceeded {
		t.Fatalf("udp associate reply: got 0x%02x, want 0x00", rep[1])
	}
	host, port, _, err := parseAddr(rep[3:])
	if err != nil {
		t.Fatal(err)
	}
	relayAddr := netip.AddrPortFrom(netip.MustParseAddr(host), port)
	if want := netip.MustParseAddr("127.0.0.1"); relayAddr.Addr() != want {
		t.Errorf("relay bound on %s, want the TCP listener's IP %s", relayAddr.Addr(), want)
	}

	uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()

	tests := []struct {
		name   string
		hdr    []byte // RSV RSV FRAG ATYP DST.ADDR DST.PORT
		query  string
		wantOK bool
	}{
		{name: "fragment dropped", hdr: append([]byte{0, 0, 1}, appendAddr(nil, fakeUDP)...), query: "frag"},
		{name: "denied dropped", hdr: append([]byte{0, 0, 0}, appendAddr(nil, netip.AddrPortFrom(deniedIP, 53))...), query: "denied"},
		{name: "by ip", hdr: append([]byte{0, 0, 0}, appendAddr(nil, fakeUDP)...), query: "query-1", wantOK: true},
		{name: "by name", hdr: append([]byte{0, 0, 0}, domainAddr("dns", 53)...), query: "query-2", wantOK: true},
	}
	for _, tt := range tests {
		// Dropped datagrams are sent first; each successful row then reads
		// exactly its own echo, which proves the dropped ones never
		// produced a reply.
		if _, err := uc.WriteToUDPAddrPort(append(tt.hdr, tt.query...), relayAddr); err != nil {
			t.Fatalf("%s: send: %v", tt.name, err)
		}
		if !tt.wantOK {
			continue
		}
		uc.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2048)
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: read reply: %v", tt.name, err)
		}
		if from != relayAddr {
			t.Errorf("%s: reply from %s, want relay %s", tt.name, from, relayAddr)
		}
		if buf[2] != 0 {
			t.Errorf("%s: reply FRAG %d, want 0", tt.name, buf[2])
		}
		src, sport, hn, err := parseAddr(buf[3:n])
		if err != nil {
			t.Fatalf("%s: reply header: %v", tt.name, err)
		}
		if got := net.JoinHostPort(src, fmt.Sprint(sport)); got != fakeUDP.String() {
			t.Errorf("%s: reply source %s, want %s", tt.name, got, fakeUDP)
		}
		if got, want := string(buf[3+hn:n]), "echo:"+tt.query; got != want {
			t.Errorf("%s: payload %q, want %q", tt.name, got, want)
		}
	}

	// Closing the control connection ends the association: the relay
	// socket stops answering.
	ctrl.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		probe, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relayAddr))
		if err != nil {
			t.Fatal(err)
		}
		probe.Write(append([]byte{0, 0, 0}, appendAddr(nil, fakeUDP)...))
		probe.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err = probe.Read(make([]byte, 64))
		probe.Close()
		if errors.Is(err, syscallECONNREFUSED) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay %s still open after the control connection closed (last err %v)", relayAddr, err)
		}
	}
}

func TestHTTPProxy(t *testing.T) {
	env := newTestEnv(t)
	tests := []struct {
		name       string
		user, pass string // server credentials
		proxyUser  *url.Userinfo
		target     string
		connect    bool // CONNECT tunnel instead of GET
		wantStatus int
		wantBody   string // substring
	}{
		{name: "get by name", target: "http://frontend/a", wantStatus: 200, wantBody: "frontend /a host=frontend"},
		{name: "get by ip", target: "http://10.96.0.20/b", wantStatus: 200, wantBody: "frontend /b"},
		{name: "get with auth", user: "u", pass: "p", proxyUser: url.UserPassword("u", "p"), target: "http://frontend/c", wantStatus: 200, wantBody: `proxy-auth=""`},
		{name: "get without auth", user: "u", pass: "p", target: "http://frontend/", wantStatus: 407},
		{name: "get wrong auth", user: "u", pass: "p", proxyUser: url.UserPassword("u", "x"), target: "http://frontend/", wantStatus: 407},
		{name: "get denied", target: "http://blocked/", wantStatus: 403},
		{name: "get unknown name", target: "http://nosuch/", wantStatus: 502},
		{name: "connect", target: "echo:7", connect: true, wantStatus: 200},
		{name: "connect with auth", user: "u", pass: "p", proxyUser: url.UserPassword("u", "p"), target: "10.96.0.21:7", connect: true, wantStatus: 200},
		{name: "connect without auth", user: "u", pass: "p", target: "echo:7", connect: true, wantStatus: 407},
		{name: "connect denied", target: "10.96.0.66:443", connect: true, wantStatus: 403},
		{name: "connect refused", target: fakeClosed.String(), connect: true, wantStatus: 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := env.config(t)
			cfg.Username, cfg.Password = tt.user, tt.pass
			s := newServer(t, cfg)
			addr, err := s.ListenHTTP("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			proxyURL := &url.URL{Scheme: "http", Host: addr.String(), User: tt.proxyUser}
			if tt.connect {
				httpConnect(t, proxyURL, tt.target, tt.wantStatus)
				return
			}
			tr := &http.Transport{Proxy: http.ProxyURL(proxyURL)}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			resp, err := client.Get(tt.target)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET %s: got status %d (%s), want %d", tt.target, resp.StatusCode, body, tt.wantStatus)
			}
			if resp.StatusCode == 407 && resp.Header.Get("Proxy-Authenticate") == "" {
				t.Errorf("407 without Proxy-Authenticate")
			}
			if !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("GET %s: got body %q, want it to contain %q", tt.target, body, tt.wantBody)
			}
		})
	}
}

// httpConnect opens a CONNECT tunnel to target and, on 200, proves it with
// an echo round trip.
func httpConnect(t *testing.T, proxyURL *url.URL, target string, wantStatus int) {
	t.Helper()
	c, err := net.Dial("tcp", proxyURL.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := &http.Request{Method: http.MethodConnect, URL: &url.URL{Opaque: target}, Host: target, Header: http.Header{}}
	if u := proxyURL.User; u != nil {
		p, _ := u.Password()
		r := &http.Request{Header: http.Header{}}
		r.SetBasicAuth(u.Username(), p)
		req.Header.Set("Proxy-Authorization", r.Header.Get("Authorization"))
	}
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("CONNECT %s: got status %d, want %d", target, resp.StatusCode, wantStatus)
	}
	if wantStatus != 200 {
		return
	}
	if br.Buffered() != 0 {
		t.Fatalf("CONNECT %s: %d unexpected bytes after 200", target, br.Buffered())
	}
	echoRoundTrip(t, c)
}

func TestListenRefusesNonLoopbackWithoutCredentials(t *testing.T) {
	tests := []struct {
		addr       string
		user, pass string
		wantErr    string
	}{
		{addr: "0.0.0.0:1080", wantErr: "proxy: refusing to listen on 0.0.0.0:1080 without credentials: use a loopback address or set a username and password"},
		{addr: ":1080", wantErr: "refusing to listen on :1080 without credentials"},
		{addr: "[::]:1080", wantErr: "refusing to listen on [::]:1080 without credentials"},
		{addr: "127.0.0.1:0"},
		{addr: "[::1]:0"},
		{addr: "localhost:0"},
		{addr: "0.0.0.0:0", user: "u", pass: "p"},
	}
	for _, tt := range tests {
		for _, proto := range []string{"socks", "http"} {
			t.Run(proto+" "+tt.addr, func(t *testing.T) {
				s := newServer(t, Config{Dial: (&net.Dialer{}).DialContext, Username: tt.user, Password: tt.pass})
				listen := s.ListenSOCKS
				if proto == "http" {
					listen = s.ListenHTTP
				}
				_, err := listen(tt.addr)
				if tt.wantErr == "" {
					if err != nil && !strings.Contains(err.Error(), "cannot assign") { // no IPv6 in some sandboxes
						t.Fatalf("listen %s: %v", tt.addr, err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("listen %s: got err %v, want %q", tt.addr, err, tt.wantErr)
				}
			})
		}
	}
}

func TestCloseWithRelayInFlight(t *testing.T) {
	env := newTestEnv(t)
	before := runtime.NumGoroutine()

	s, err := New(env.config(t))
	if err != nil {
		t.Fatal(err)
	}
	socksAddr, err := s.ListenSOCKS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, err := s.ListenHTTP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	// One SOCKS relay, one HTTP CONNECT tunnel and one UDP association, all
	// open and proven live by a round trip.
	d, _ := xproxy.SOCKS5("tcp", socksAddr.String(), nil, xproxy.Direct)
	sc, err := d.Dial("tcp", fakeEcho.String())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	hc, err := net.Dial("tcp", httpAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	fmt.Fprintf(hc, "CONNECT %s HTTP/1.1\r\nHost: %[1]s\r\n\r\n", fakeEcho)
	hbr := bufio.NewReader(hc)
	if resp, err := http.ReadResponse(hbr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	uctrl := socksHandshake(t, socksAddr.String())
	defer uctrl.Close()
	uctrl.Write(append([]byte{socksVersion, cmdUDPAssociate, 0}, appendAddr(nil, netip.AddrPort{})...))
	if _, err := io.ReadFull(uctrl, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		conn net.Conn
		r    io.Reader
	}{{sc, sc}, {hc, hbr}} {
		c.conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c.conn, "ping")
		if _, err := io.ReadFull(c.r, make([]byte, 4)); err != nil {
			t.Fatalf("relay not live: %v", err)
		}
	}

	// A forwarded GET leaves a keep-alive conn in the proxy's Transport.
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: httpAddr.String()})}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("http://frontend/")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	closed := make(chan error)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with relays in flight")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	// The clients see their connections end.
	for _, r := range []io.Reader{sc, hbr, uctrl} {
		if _, err := io.ReadAll(r); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			t.Errorf("read after Close: %v", err)
		}
	}
	sc.Close()
	hc.Close()
	uctrl.Close()
	tr.CloseIdleConnections()

	// Every goroutine the Server started is gone (polled: the backends'
	// per-connection goroutines exit asynchronously once their peer closes).
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: got %d, want <= %d\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}

	if _, err := s.ListenSOCKS("127.0.0.1:0"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ListenSOCKS after Close: got %v, want net.ErrClosed", err)
	}
}

func isReset(err error) bool { return errors.Is(err, syscallECONNRESET) }
