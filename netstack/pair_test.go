package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/tun"
)

// Test topology (in memory, no WireGuard):
//
//	Client stack 10.77.0.2 / fd77::2 ──pump──► Gateway stack 10.77.0.1 / fd77::1 ──Dial──► fakeDialer
//	          ◄──────────────pump───────────                                        maps 192.0.2.x → 127.0.0.1 servers
var (
	clientV4  = netip.MustParseAddr("10.77.0.2")
	clientV6  = netip.MustParseAddr("fd77::2")
	gatewayV4 = netip.MustParseAddr("10.77.0.1")
	gatewayV6 = netip.MustParseAddr("fd77::1")
)

// fakeDialer maps fake destinations (TEST-NET addresses) to real loopback
// servers and records every address it was asked for, so tests can prove
// what the gateway never dials. Unmapped addresses fail without touching the network.
type fakeDialer struct {
	mu     sync.Mutex
	routes map[string]string
	calls  []string
}

func newFakeDialer() *fakeDialer { return &fakeDialer{routes: map[string]string{}} }

func (d *fakeDialer) route(fake, real string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.routes[fake] = real
}

func (d *fakeDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.calls = append(d.calls, address)
	real, ok := d.routes[address]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("fake dial %s %s: %w", network, address, errors.New("no route in test"))
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, real)
}

func (d *fakeDialer) called(address string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.calls {
		if c == address {
			return true
		}
	}
	return false
}

// testPair is a Client and a Gateway joined by an in-memory packet pump.
type testPair struct {
	client *Client
	gw     *Gateway
	dialer *fakeDialer
	reg    *prometheus.Registry
}

// newTestPair builds the pair; cfg's Addrs, Dial and Registerer are filled in.
// Everything is closed at test cleanup.
func newTestPair(tb testing.TB, cfg GatewayConfig) *testPair {
	tb.Helper()
	p := &testPair{dialer: newFakeDialer(), reg: prometheus.NewRegistry()}
	log := testkit.Logger(tb)
	if _, ok := tb.(*testing.B); ok {
		log = nil
	}
	cfg.Addrs = []netip.Addr{gatewayV4, gatewayV6}
	cfg.Dial = p.dialer.Dial
	cfg.Registerer = p.reg
	cfg.Log = log
	gw, err := NewGateway(cfg)
	if err != nil {
		tb.Fatalf("NewGateway: %v", err)
	}
	client, err := NewClient(ClientConfig{Addrs: []netip.Addr{clientV4, clientV6}, Log: log, Registerer: p.reg})
	if err != nil {
		gw.Close()
		tb.Fatalf("NewClient: %v", err)
	}
	p.gw, p.client = gw, client
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pump(client.TUN(), gw.TUN()) }()
	go func() { defer wg.Done(); pump(gw.TUN(), client.TUN()) }()
	tb.Cleanup(func() {
		client.Close()
		gw.Close()
		wg.Wait()
	})
	return p
}

// pump moves packets from src to dst the way wireguard-go would (batched,
// with a header offset) until either side is closed.
func pump(src, dst tun.Device) {
	const offset = 16
	bufs := make([][]byte, src.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	out := make([][]byte, len(bufs))
	for {
		n, err := src.Read(bufs, sizes, offset)
		if err != nil {
			return
		}
		for i := range n {
			out[i] = bufs[i][:offset+sizes[i]]
		}
		if _, err := dst.Write(out[:n], offset); err != nil {
			return
		}
	}
}
