package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// Topology of newPair (transport "stream"):
//
//	client Device ── ChannelTUN 100.64.0.2
//	   │ StreamBind ──TCP 127.0.0.1:N──► StreamServerBind
//	server Device ── ChannelTUN 100.64.0.1
//
// and for "udp" the same two devices over wireguard-go's UDP bind on
// 127.0.0.1, the client configured with the server's endpoint.

var (
	serverIP = netip.MustParseAddr("100.64.0.1")
	clientIP = netip.MustParseAddr("100.64.0.2")
)

type node struct {
	key Key
	tun *tuntest.ChannelTUN
	dev *Device
	reg *prometheus.Registry
	ip  netip.Addr
}

type pair struct {
	server, client *node
	ln             *trackingListener // stream only
	serverAddr     string
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func hostPrefix(a netip.Addr) []netip.Prefix { return []netip.Prefix{netip.PrefixFrom(a, a.BitLen())} }

// trackingListener remembers accepted conns so tests can break them.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) closeAll() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	n := len(l.conns)
	l.conns = nil
	return n
}

func tcpDialer(addr string) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// newServer starts the gateway-side device for transport.
func newServer(t *testing.T, transport string, peers []PeerConfig) (*node, *pair) {
	t.Helper()
	n := &node{key: mustKey(t), tun: tuntest.NewChannelTUN(), reg: prometheus.NewRegistry(), ip: serverIP}
	p := &pair{server: n}
	cfg := DeviceConfig{TUN: n.tun.TUN(), Log: testLogger(t).With("node", "server"), Registerer: n.reg,
		Config: Config{PrivateKey: n.key, Peers: peers}}
	switch transport {
	case "udp":
		cfg.Bind = NewUDPBind()
	case "stream":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p.ln = &trackingListener{Listener: ln}
		p.serverAddr = ln.Addr().String()
		cfg.Bind = NewStreamServerBind(StreamServerConfig{Listener: p.ln, Log: cfg.Log, Registerer: n.reg})
	}
	dev, err := NewDevice(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.dev = dev
	t.Cleanup(func() { dev.Close() })
	if transport == "udp" {
		p.serverAddr = fmt.Sprintf("127.0.0.1:%d", n.dev.wg.Bind().(interface{ ParseEndpoint(string) (any, error) }) )
	}
	return n, p
}
