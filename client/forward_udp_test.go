package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// The relay logic on loopback: the "tunnel" side of each flow is a plain UDP
// socket to an echo server that answers "<the flow's address> <payload>",
// so a reply tells which flow carried it. The real tunnel is in
// forward_linux_test.go.

type udpLab struct {
	relay *udpRelay
	ln    *ForwardListener
	open  atomic.Int32 // flow sockets not yet closed
}

func newUDPLab(t *testing.T, idle time.Duration, maxFlows int) *udpLab {
	t.Helper()
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s", from, buf[:n]), from)
		}
	}()
	lab := &udpLab{}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "udp", echo.LocalAddr().String())
		if err != nil {
			return nil, err
		}
		lab.open.Add(1)
		return &countedConn{Conn: c, open: &lab.open}, nil
	}
	lab.relay, err = newUDPRelay("127.0.0.1:0", udpRelayConfig{Dial: dial, Idle: idle, MaxFlow: maxFlows, Log: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	lab.ln = lab.relay.start(t.Context())
	t.Cleanup(func() { lab.ln.Close() })
	return lab
}

type countedConn struct {
	net.Conn
	open   *atomic.Int32
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.open.Add(-1)
	}
	return c.Conn.Close()
}

// client is one local program talking to the forward.
func (lab *udpLab) client(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, lab.ln.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ask sends msg and returns the flow address the echo server saw.
func ask(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	buf := make([]byte, 2048)
	for attempt := 0; ; attempt++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err != nil {
			if attempt == 4 {
				t.Fatalf("%s: no reply: %v", msg, err)
			}
			continue // UDP on loopback hardly loses, but may
		}
		flow, payload, _ := strings.Cut(string(buf[:n]), " ")
		if payload != msg {
			t.Fatalf("reply: got %q, want %q", payload, msg)
		}
		return flow
	}
}

func TestUDPRelayFlowPerClient(t *testing.T) {
	lab := newUDPLab(t, time.Minute, 0)
	a, b := lab.client(t), lab.client(t)
	flows := map[string]string{}
	for i := range 3 {
		for name, c := range map[string]*net.UDPConn{"a": a, "b": b} {
			flow := ask(t, c, fmt.Sprintf("%s-%d", name, i))
			if prev, ok := flows[name]; ok && prev != flow {
				t.Errorf("client %s: got flow %s, want the same flow %s as before", name, flow, prev)
			}
			flows[name] = flow
		}
	}
	if flows["a"] == flows["b"] {
		t.Errorf("clients a and b: got one flow %s for both, want one each", flows["a"])
	}
	if got := lab.relay.flowCount(); got != 2 {
		t.Errorf("flows: got %d, want 2", got)
	}
}

func TestUDPRelayIdleFlowsEnd(t *testing.T) {
	const idle = 300 * time.Millisecond
	lab := newUDPLab(t, idle, 0)
	c := lab.client(t)
	first := ask(t, c, "hello")
	// Traffic more often than the idle time keeps the flow.
	tick := time.NewTicker(idle / 4)
	defer tick.Stop()
	for i := range 8 {
		<-tick.C // pacing the client, not synchronisation
		if got := ask(t, c, fmt.Sprint("keep ", i)); got != first {
			t.Fatalf("active flow: got flow %s, want %s kept", got, first)
		}
	}
	testkit.WaitFor(t, 5*time.Second, "idle flow closed", func() bool { return lab.relay.flowCount() == 0 && lab.open.Load() == 0 })
	if got := ask(t, c, "again"); got == first {
		t.Errorf("after idle: got the old flow %s, want a new one", got)
	}
	if got := lab.relay.flowCount(); got != 1 {
		t.Errorf("flows after a new datagram: got %d, want 1", got)
	}
}

func TestUDPRelayFlowBound(t *testing.T) {
	lab := newUDPLab(t, time.Minute, 2)
	c1, c2, c3 := lab.client(t), lab.client(t), lab.client(t)
	f1 := ask(t, c1, "one")
	f2 := ask(t, c2, "two")
	ask(t, c3, "three") // takes the place of c1's flow, the idlest
	if got := lab.relay.flowCount(); got != 2 {
		t.Errorf("flows at the bound: got %d, want 2", got)
	}
	testkit.WaitFor(t, 5*time.Second, "evicted flow socket closed", func() bool { return lab.open.Load() == 2 })
	if got := ask(t, c2, "two again"); got != f2 {
		t.Errorf("client 2: got flow %s, want its flow %s kept", got, f2)
	}
	if got := ask(t, c1, "one again"); got == f1 {
		t.Errorf("evicted client 1: got its old flow %s, want a new one", got)
	}
	if got := lab.relay.flowCount(); got != 2 {
		t.Errorf("flows: got %d, want 2", got)
	}
}

func TestUDPRelayCloseFreesAddress(t *testing.T) {
	lab := newUDPLab(t, time.Minute, 0)
	ask(t, lab.client(t), "hi")
	addr := lab.ln.Addr().(*net.UDPAddr)
	if err := lab.ln.Close(); err != nil {
		t.Fatal(err)
	}
	if got := lab.relay.flowCount(); got != 0 {
		t.Errorf("flows after Close: got %d, want 0", got)
	}
	if got := lab.open.Load(); got != 0 {
		t.Errorf("flow sockets open after Close: got %d, want 0", got)
	}
	pc, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Fatalf("bind %s right after Close: %v", addr, err)
	}
	pc.Close()
}

// stackOnly is a netstack-mode client without a tunnel: enough to open
// forwards and see their local side.
func stackOnly(t *testing.T) *Client {
	t.Helper()
	return &Client{stack: loopbackStack{}}
}

// loopbackStack is a Stack whose "tunnel" is this host's own network.
type loopbackStack struct{}

func (loopbackStack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (loopbackStack) ListenTCP(port uint16) (net.Listener, error) {
	return net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}

func (loopbackStack) Ping(context.Context, netip.Addr) (time.Duration, error) {
	return 0, errors.ErrUnsupported
}

func (loopbackStack) Close() error { return nil }

func TestListenForward(t *testing.T) {
	c := stackOnly(t)
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			l, err := c.ListenForward(t.Context(), network, "127.0.0.1:0", "10.96.0.10:53", nil)
			if err != nil {
				t.Fatal(err)
			}
			local := l.Addr().String()
			_, err = c.ListenForward(t.Context(), network, local, "10.96.0.10:53", nil)
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("second forward on %s: got %v, want EADDRINUSE", local, err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			l2, err := c.ListenForward(t.Context(), network, local, "10.96.0.10:53", nil)
			if err != nil {
				t.Fatalf("forward on %s right after Close: %v", local, err)
			}
			// Ending ctx closes it too.
			ctx, cancel := context.WithCancel(t.Context())
			l2.Close()
			l3, err := c.ListenForward(ctx, network, local, "10.96.0.10:53", nil)
			if err != nil {
				t.Fatal(err)
			}
			cancel()
			<-l3.done
			if err := l3.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, tc := range []struct{ network, remote, want string }{
		{"udp", "kube-dns:53", "want IP:port"},
		{"sctp", "10.96.0.10:53", "want tcp or udp"},
	} {
		if _, err := c.ListenForward(t.Context(), tc.network, "127.0.0.1:0", tc.remote, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ListenForward(%s, %s): got %v, want error containing %q", tc.network, tc.remote, err, tc.want)
		}
	}
	if _, err := (&Client{}).ListenForward(t.Context(), "udp", "127.0.0.1:0", "10.96.0.10:53", nil); err == nil || !strings.Contains(err.Error(), "netstack mode") {
		t.Errorf("ListenForward in TUN mode: got %v, want error naming netstack mode", err)
	}
}
