package client_test

// The inbound filter's proof with real parts: a real gateway (agent.Gateway:
// wireguard-go and its gVisor forwarder) in gw, a real client in ws (a
// kernel TUN, or the gVisor stack), WireGuard over the stream transport. The
// gateway dials into the workstation's tunnel address from its own stack,
// exactly as its relay does for an intercept:
//
//	ws  100.96.0.2 (TUN or netstack)               gw                          svc
//	  :7001 intercepted (AllowInbound)  ══ stream ══ agent.Gateway ──veth── 10.200.2.2
//	  :7002 listens, not intercepted         Stack().DialContext("100.96.0.2:…")
//	  :7003 UDP, not intercepted
//
// Both ws listeners are bound to every address, like sshd: only the filter
// stands between them and the gateway.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/agent"
	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/client/gvisorstack"
	"github.com/bridgetun/bridgetun/internal/dptopo"
	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/bridgetun/bridgetun/tunnel"
)

const (
	allowedPort = 7001
	closedPort  = 7002
	closedUDP   = 7003
)

func TestInboundFilterDataplane(t *testing.T) {
	testkit.RequireRoot(t)                        // namespace tests (run: sudo go test ./client/)
	topo, err := dptopo.New("ib", "", t.Output()) // no gateway process: the gateway runs in this test
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(topo.Close)
	wsAddr := netip.MustParsePrefix(dptopo.ClientAddrs[0]).Addr()
	for _, mode := range []client.Mode{client.ModeTUN, client.ModeNetstack} {
		t.Run(string(mode), func(t *testing.T) {
			var kept net.Conn // a connection to the intercepted port, open across the steps
			t.Cleanup(func() {
				if kept != nil {
					kept.Close()
				}
			})
			gw := startGateway(t, topo)
			reg := prometheus.NewRegistry()
			c := connect(t, topo.WS, client.Config{
				PrivateKey: topo.ClientKeys[0], Addr: netip.MustParsePrefix(dptopo.ClientAddrs[0]), GatewayKey: topo.GatewayKey.PublicKey(),
				Routes:    []netip.Prefix{netip.MustParsePrefix("10.200.2.0/24"), netip.MustParsePrefix(dptopo.GatewayTun + "/32")},
				Mode:      mode,
				Transport: client.TransportStream,
				StreamDial: func(ctx context.Context) (net.Conn, error) {
					return topo.WS.DialContext(ctx, "tcp", gw.streamAddr)
				},
				NewStack:   gvisorstack.New,
				Registerer: reg,
				Log:        testkit.Logger(t),
			})
			for _, port := range []uint16{allowedPort, closedPort} {
				serveEcho(t, listenWS(t, topo, c, port))
			}
			udp := listenWSUDP(t, topo, c, closedUDP)
			c.AllowInbound(allowedPort)
			dialWS := func(port int, within time.Duration) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(t.Context(), within)
				defer cancel()
				return gw.Stack().DialContext(ctx, "tcp", netip.AddrPortFrom(wsAddr, uint16(port)).String())
			}

			t.Run("replies to the workstation's own flows pass", func(t *testing.T) {
				d := dialerFor(topo.WS, c)
				checkHTTP(t, d)
				checkUDPEcho(t, d)
			})
			t.Run("the intercepted port connects", func(t *testing.T) {
				conn, err := dialWS(allowedPort, 10*time.Second)
				if err != nil {
					t.Fatalf("gateway dials %s:%d: %v, want a connection", wsAddr, allowedPort, err)
				}
				echo(t, conn, "intercepted")
				kept = conn
			})
			t.Run("a port the workstation listens on but does not intercept does not", func(t *testing.T) {
				before := droppedInbound(t, reg, "tcp")
				if conn, err := dialWS(closedPort, 2*time.Second); err == nil {
					conn.Close()
					t.Fatalf("gateway dials %s:%d: got a connection, want it dropped", wsAddr, closedPort)
				}
				testkit.WaitFor(t, 5*time.Second, "tcp drops counted", func() bool { return droppedInbound(t, reg, "tcp") > before })
			})
			t.Run("a datagram to a UDP port the workstation did not send from is dropped", func(t *testing.T) {
				before := droppedInbound(t, reg, "udp")
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				defer cancel()
				conn, err := gw.Stack().DialContext(ctx, "udp", netip.AddrPortFrom(wsAddr, closedUDP).String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if _, err := conn.Write([]byte("unsolicited")); err != nil {
					t.Fatal(err)
				}
				testkit.WaitFor(t, 5*time.Second, "udp drops counted", func() bool { return droppedInbound(t, reg, "udp") > before })
				_ = udp.SetReadDeadline(time.Now().Add(200 * time.Millisecond)) // the drop is counted: nothing can be on its way
				if n, _, err := udp.ReadFrom(make([]byte, 64)); err == nil {
					t.Errorf("ws received %d bytes on UDP %d, want nothing", n, closedUDP)
				}
			})
			t.Run("after RevokeInbound new connections are dropped, open ones go on", func(t *testing.T) {
				if kept == nil {
					t.Fatal("no connection kept from the earlier step (it failed)")
				}
				c.RevokeInbound(allowedPort)
				before := droppedInbound(t, reg, "tcp")
				if conn, err := dialWS(allowedPort, 2*time.Second); err == nil {
					conn.Close()
					t.Fatalf("gateway dials %s:%d after revoke: got a connection, want it dropped", wsAddr, allowedPort)
				}
				if got := droppedInbound(t, reg, "tcp"); got <= before {
					t.Errorf("tcp drops: got %v, want more than %v", got, before)
				}
				echo(t, kept, "still open")
			})
		})
	}
}

// testGateway is an in-process gateway inside topo.GW: its stream listener
// and its dials for peers live in that namespace.
type testGateway struct {
	*agent.Gateway
	streamAddr string
}

func startGateway(t *testing.T, topo *dptopo.Topology) *testGateway {
	t.Helper()
	ln, err := topo.GW.Listen("tcp", dptopo.GatewayWSIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	g, err := agent.NewGateway(agent.GatewayConfig{
		PrivateKey: topo.GatewayKey, Addr: netip.MustParseAddr(dptopo.GatewayTun),
		Peers: []tunnel.PeerConfig{{
			PublicKey:  topo.ClientKeys[0].PublicKey(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix(dptopo.ClientAddrs[0])},
		}},
		StreamListener: ln,
		Dial:           topo.GW.DialContext,
		Log:            testkit.Logger(t),
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("close gateway: %v", err)
		}
	})
	return &testGateway{Gateway: g, streamAddr: ln.Addr().String()}
}

// listenWS listens on port of the workstation: on every address of ws in
// TUN mode, on the stack's tunnel address in netstack mode.
func listenWS(t *testing.T, topo *dptopo.Topology, c *client.Client, port uint16) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	if s := c.Netstack(); s != nil {
		ln, err = s.ListenTCP(port)
	} else {
		ln, err = topo.WS.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listenWSUDP(t *testing.T, topo *dptopo.Topology, c *client.Client, port uint16) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	var err error
	if s := c.Netstack(); s != nil {
		ls, ok := s.(interface {
			ListenUDP(port uint16) (net.PacketConn, error)
		})
		if !ok {
			t.Fatal("the netstack has no ListenUDP")
		}
		pc, err = ls.ListenUDP(port)
	} else {
		pc, err = topo.WS.ListenPacket("udp", fmt.Sprintf("0.0.0.0:%d", port))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func serveEcho(t *testing.T, ln net.Listener) {
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: got %q, %v; want %q", buf, err, msg)
	}
	if err := c.SetDeadline(time.Time{}); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal(err)
	}
}

// droppedInbound reads bridgetun_tunnel_inbound_dropped_total{proto}.
func droppedInbound(t *testing.T, reg *prometheus.Registry, proto string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bridgetun_tunnel_inbound_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "proto" && l.GetValue() == proto {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no bridgetun_tunnel_inbound_dropped_total{proto=%q}", proto)
	return 0
}
