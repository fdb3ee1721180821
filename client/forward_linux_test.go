package client_test

// Forwards through a real tunnel (topology in internal/dptopo): local
// programs talk to loopback listeners in the test's namespace, the client's
// netstack carries their traffic over WireGuard from ws to the gateway, and
// svc answers.
//
//	local programs ──127.0.0.1── forward ── netstack client (ws) ══WG══ gw ── svc :80 http, :7 udp echo

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/internal/dptopo"
)

func TestForwardThroughTunnel(t *testing.T) {
	topo := newTopology(t)
	c := connect(t, topo.WS, topo.ClientConfig(0, topo.WS, client.TransportUDP, client.ModeNetstack, 0))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	t.Run("tcp", func(t *testing.T) {
		addr, err := c.Forward(ctx, "127.0.0.1:0", dptopo.SvcIP+":80", nil)
		if err != nil {
			t.Fatal(err)
		}
		plain := func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr.String())
		}
		checkHTTP(t, plain)
	})

	t.Run("udp", func(t *testing.T) {
		l, err := c.ListenForward(ctx, "udp", "127.0.0.1:0", dptopo.SvcIP+":7", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Clients at once, each on its own flow: every reply must be the
		// client's own datagram.
		var wg sync.WaitGroup
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := net.DialUDP("udp", nil, l.Addr().(*net.UDPAddr))
				if err != nil {
					t.Error(err)
					return
				}
				defer conn.Close()
				for j := range 20 {
					if err := echoOnce(conn, fmt.Sprintf("client %d datagram %d", i, j)); err != nil {
						t.Errorf("client %d: %v", i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		addr := l.Addr().(*net.UDPAddr)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenUDP("udp", addr)
		if err != nil {
			t.Fatalf("bind %s after Close: %v", addr, err)
		}
		pc.Close()
	})
}

// echoOnce sends msg and waits for the same bytes back, retrying a few times
// (the first datagram of a flow may be lost while WireGuard settles).
func echoOnce(c *net.UDPConn, msg string) error {
	buf := make([]byte, 2048)
	for attempt := 0; attempt < 5; attempt++ {
		if _, err := c.Write([]byte(msg)); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, err := c.Read(buf)
			if err != nil {
				break // timed out: send again
			}
			if got := string(buf[:n]); got == msg {
				return nil
			} else if !strings.HasPrefix(got, msg[:strings.LastIndex(msg, " ")]) {
				return fmt.Errorf("got %q, want %q: another client's reply", got, msg)
			}
			// A late echo of this client's earlier retry: read on.
		}
	}
	return fmt.Errorf("no echo of %q after 5 tries", msg)
}
