package tunnel

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestServeUAPI: the device's control socket answers wireguard-tools'
// protocol (and `wg show` itself when installed) with the real peer and
// its handshake; after ctx ends ServeUAPI returns and the socket is gone.
// With the stream transport the endpoint ("stream") is no address, which
// wg cannot parse: it is left out and the rest still shows.
func TestServeUAPI(t *testing.T) {
	testkit.RequireRoot(t)
	for _, transport := range transports {
		t.Run(transport, func(t *testing.T) { testServeUAPI(t, transport) })
	}
}

func testServeUAPI(t *testing.T, transport string) {
	checkGoroutines(t)
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")
	tn := newTestNet(t, transport, map[Key]netip.Addr{ck.PublicKey(): cip})
	client := tn.addClient(ck, cip)
	ping(t, client, tn.server, 3*time.Second)

	name := "btuapitest0"
	sock, stop := serveUAPI(t, client.dev, name)
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("socket %s: mode %v (%v), want root only", sock, fi.Mode(), err)
	}

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	sc := bufio.NewScanner(c)
	for sc.Scan() && sc.Text() != "" {
		k, v, _ := strings.Cut(sc.Text(), "=")
		got[k] = v
	}
	c.Close()
	wantEndpoint := transport == "udp"
	if got["public_key"] != tn.server.key.PublicKey().hex() || got["errno"] != "0" || got["last_handshake_time_sec"] == "0" || (got["endpoint"] != "") != wantEndpoint {
		t.Errorf("UAPI get: %v\nwant the gateway peer %s, a handshake, errno 0, an endpoint only over udp", got, tn.server.key.PublicKey().hex())
	}
	if wg, err := exec.LookPath("wg"); err == nil {
		out, err := exec.Command(wg, "show", name).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "peer: "+tn.server.key.PublicKey().String()) || !strings.Contains(string(out), "latest handshake") {
			t.Errorf("wg show %s: %v\n%s\nwant the gateway peer and its handshake", name, err, out)
		}
	} else {
		t.Log("wg not installed: checked the UAPI protocol only")
	}

	if err := stop(); err != nil {
		t.Errorf("ServeUAPI after cancel: %v", err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind: %v", sock, err)
	}
}

// TestServeUAPIClosesListenerOnce: however ServeUAPI ends, it closes the
// control socket's listener exactly once. wireguard-go's listener closes
// its inotify descriptor by number on every Close, so a second Close shut
// an unrelated file that had reused the number (a DNS restore's crash
// marker, read in the same moment: "bad file descriptor", seen in CI).
func TestServeUAPIClosesListenerOnce(t *testing.T) {
	testkit.RequireRoot(t)
	checkGoroutines(t)
	ck := mustKey(t)
	cip := netip.MustParseAddr("100.64.0.2")
	tn := newTestNet(t, "udp", map[Key]netip.Addr{ck.PublicKey(): cip})
	client := tn.addClient(ck, cip)

	var closes atomic.Int32
	orig := uapiListen
	uapiListen = func(name string, f *os.File) (net.Listener, error) {
		ln, err := orig(name, f)
		if err != nil {
			return nil, err
		}
		return countCloses{Listener: ln, n: &closes}, nil
	}
	t.Cleanup(func() { uapiListen = orig })

	name := "btuapionce0"
	_, stop := serveUAPI(t, client.dev, name)
	if err := stop(); err != nil {
		t.Fatalf("ServeUAPI: %v", err)
	}
	if n := closes.Load(); n != 1 {
		t.Errorf("the listener was closed %d times, want once", n)
	}
}

// serveUAPI runs dev.ServeUAPI(name) until stop, which ends its context
// and returns its error (failing the test if it does not return within 5 s);
// it returns once the socket exists.
func serveUAPI(t *testing.T, dev *Device, name string) (sock string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- dev.ServeUAPI(ctx, name) }()
	sock = filepath.Join(UAPIDir, name+".sock")
	testkit.WaitFor(t, 5*time.Second, "the control socket", func() bool { _, err := os.Stat(sock); return err == nil })
	return sock, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("ServeUAPI did not return after ctx ended")
			return nil
		}
	}
}

type countCloses struct {
	net.Listener
	n *atomic.Int32
}

func (c countCloses) Close() error { c.n.Add(1); return c.Listener.Close() }
