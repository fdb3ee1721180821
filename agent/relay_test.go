package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestRelayDrain: when the gateway stops (its pod replaced or uninstalled),
// a relay in flight keeps working until it ends by itself, new CONNECTs are
// refused, and Run returns once the relay is done; a relay still open when
// the drain timeout passes is cut.
func TestRelayDrain(t *testing.T) {
	for _, tc := range []struct {
		name       string
		drain      time.Duration
		clientEnds bool // the sidecar's connection ends by itself during the drain
	}{
		{name: "relay finishes within the drain", drain: time.Minute, clientEnds: true},
		{name: "relay cut at the drain timeout", drain: 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewIntercepts(0, nil)
			r := req(keyA, "")
			r.Port = echoServer(t).Addr().(*net.TCPAddr).Port
			if _, err := tab.Add(r, netip.MustParseAddr("127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			relay := NewRelay(RelayConfig{Intercepts: tab, Token: "tok", Dial: (&net.Dialer{}).DialContext, DrainTimeout: tc.drain})
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx, ln) }()

			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			target := fmt.Sprintf("127.0.0.1:%d", r.Port)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer tok\r\n\r\n", target, target)
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT: %v, %v", resp, err)
			}
			echoLine := func(s string) (string, error) {
				if _, err := fmt.Fprint(c, s); err != nil {
					return "", err
				}
				return br.ReadString('\n')
			}
			if got, err := echoLine("before\n"); got != "before\n" {
				t.Fatalf("echo before the stop: %q, %v", got, err)
			}

			cancel() // the gateway is told to stop
			if err := waitRefused(ln.Addr().String()); err != nil {
				t.Fatal(err)
			}
			if tc.clientEnds {
				if got, err := echoLine("during the drain\n"); got != "during the drain\n" {
					t.Fatalf("echo during the drain: %q, %v (want the relay to keep working)", got, err)
				}
				select {
				case err := <-done:
					t.Fatalf("Run returned (%v) while a relay was in flight", err)
				default:
				}
				c.Close()
			} else {
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := br.ReadString('\n'); err == nil || isTimeout(err) {
					t.Fatalf("read from a relay past the drain timeout: %v, want it cut", err)
				}
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10 s of its relay ending")
			}
		})
	}
}

// waitRefused dials addr until it refuses (the listener closed), for at
// most 10 s.
func waitRefused(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		time.Sleep(10 * time.Millisecond) // polling the listener's close, bounded above
	}
	return fmt.Errorf("%s still accepts 10 s after the stop", addr)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestRelayConnectHalfClose: bytes a sidecar sends with its CONNECT (in
// the same write, so the server has buffered them) reach the workstation
// first, and the sidecar's half-close reaches it as EOF while the answer
// still comes back; the relay then ends and Run returns.
func TestRelayConnectHalfClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		early string // sent in the CONNECT's own write
	}{
		{"no early bytes", ""},
		{"early bytes", "early\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab := NewIntercepts(0, nil)
			r := req(keyA, "")
			r.Port = echoServer(t).Addr().(*net.TCPAddr).Port
			if _, err := tab.Add(r, netip.MustParseAddr("127.0.0.1")); err != nil {
				t.Fatal(err)
			}
			relay := NewRelay(RelayConfig{Intercepts: tab, Token: "tok", Dial: (&net.Dialer{}).DialContext, Log: testkit.Logger(t)})
			ln := listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- relay.Run(ctx, ln) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}()

			d, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c := d.(*net.TCPConn)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			target := fmt.Sprintf("127.0.0.1:%d", r.Port)
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer tok\r\n\r\n%s", target, target, tc.early)
			br := bufio.NewReader(c)
			if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT: %v, %v", resp, err)
			}
			fmt.Fprint(c, "late\n")
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(br)
			if want := tc.early + "late\n"; err != nil || string(got) != want {
				t.Errorf("echo after the half-close: got %q, %v; want %q then EOF", got, err, want)
			}
		})
	}
}
