package client_test

// The data-plane proof: real namespaces, real TUN devices, a real gateway
// process, real UDP and TCP transports. Topology in internal/dptopo:
//
//	ws ──veth── gw(bridgetun-agent gateway, no forwarding) ──veth── svc
//	ws2 ─veth──┘

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/internal/dptopo"
	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/bridgetun/bridgetun/tunnel"
)

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func TestDataplane(t *testing.T) {
	topo := newTopology(t)
	ctx := t.Context()

	t.Run("ws cannot reach svc without the tunnel", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		c, err := topo.WS.DialContext(dctx, "tcp", dptopo.SvcIP+":80")
		if err == nil {
			c.Close()
			t.Fatalf("dial svc from ws without tunnel: got a connection, want failure")
		}
	})

	for _, tr := range []client.Transport{client.TransportUDP, client.TransportStream} {
		for _, mode := range []client.Mode{client.ModeTUN, client.ModeNetstack} {
			t.Run(string(tr)+"/"+string(mode), func(t *testing.T) {
				cfg := topo.ClientConfig(0, topo.WS, tr, mode, 0)
				var cut *cutter
				if tr == client.TransportStream {
					cut = &cutter{dial: cfg.StreamDial}
					cfg.StreamDial = cut.Dial
				}
				c := connect(t, topo.WS, cfg)
				dial := dialerFor(topo.WS, c)
				t.Run("http", func(t *testing.T) { checkHTTP(t, dial) })
				t.Run("gateway buffers follow the transport", func(t *testing.T) {
					// Stream workstations' flows may grow their buffers
					// at the gateway, UDP ones keep them fixed.
					before := growingFlows(t, topo)
					checkHTTP(t, dial)
					grew := growingFlows(t, topo) - before
					if want := tr == client.TransportStream; (grew > 0) != want {
						t.Errorf("%s: %v more gateway flows with growing buffers, want growing %v", tr, grew, want)
					}
				})
				t.Run("transfer 64MiB", func(t *testing.T) { checkBlob(t, dial, nil) })
				t.Run("udp echo", func(t *testing.T) { checkUDPEcho(t, dial) })
				t.Run("icmp echo", func(t *testing.T) { checkPing(t, topo.WS, c) })
				if cut != nil {
					t.Run("stream cut mid-transfer", func(t *testing.T) {
						before := cut.dials.Load()
						stop := make(chan struct{})
						go func() { // a stalled recovery leaves evidence
							select {
							case <-stop:
							case <-time.After(15 * time.Second): // diagnostics only, not synchronisation
								m, _ := topo.GatewayMetrics(context.Background())
								ss, _ := topo.WS.Output("ss", "-tin")
								t.Logf("stalled >15s; gateway metrics:\n%s\nws sockets:\n%s", grep(m, "bridgetun_"), ss)
							}
						}()
						checkBlob(t, dial, func() { cut.Cut() })
						close(stop)
						if got := cut.dials.Load(); got <= before {
							t.Fatalf("stream dials after cut: got %d, want > %d (no redial happened)", got, before)
						}
					})
				}
				st, err := c.Status()
				if err != nil {
					t.Fatal(err)
				}
				if st.LastHandshake.IsZero() || st.RxBytes == 0 || st.TxBytes == 0 {
					t.Errorf("status: got handshake %v rx %d tx %d, want all non-zero", st.LastHandshake, st.RxBytes, st.TxBytes)
				}
			})
		}
	}

	t.Run("two clients at once", func(t *testing.T) {
		c1 := connect(t, topo.WS, topo.ClientConfig(0, topo.WS, client.TransportUDP, client.ModeTUN, 0))
		c2 := connect(t, topo.WS2, topo.ClientConfig(1, topo.WS2, client.TransportStream, client.ModeTUN, 0))
		var wg sync.WaitGroup
		for i, d := range []dialFunc{dialerFor(topo.WS, c1), dialerFor(topo.WS2, c2)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := get(t, d, "http://"+dptopo.SvcIP+"/")
				if !strings.HasPrefix(body, "hello from svc") {
					t.Errorf("client %d: got %q, want hello", i, body)
				}
				checkBlob(t, d, nil)
			}()
		}
		wg.Wait()
		// The gateway routes replies by each peer's tunnel address (AllowedIPs):
		// had the two clients shared one, one of the concurrent downloads above
		// would have failed its checksum or stalled.
	})

	t.Run("garbage is dropped and counted", func(t *testing.T) {
		before := metrics(t, topo)
		// Random datagrams at the UDP port.
		pc, err := topo.WS.ListenPacket("udp", "10.200.1.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		gwUDP := &net.UDPAddr{IP: net.ParseIP(dptopo.GatewayWSIP), Port: dptopo.UDPPort}
		for i := range 50 {
			b := make([]byte, 1+i*29%1400)
			_, _ = rand.Read(b)
			if _, err := pc.WriteTo(b, gwUDP); err != nil {
				t.Fatal(err)
			}
		}
		// An oversized / bogus frame on the stream port.
		sc, err := topo.WS.DialContext(ctx, "tcp", fmt.Sprintf("%s:%d", dptopo.GatewayWSIP, dptopo.StreamPort))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = sc.Write([]byte{0xff, 0xff, 1, 2, 3})
		_, _ = sc.Write(bytes.Repeat([]byte{0xAB}, 4096))
		sc.Close()
		// An unknown peer tries to connect.
		stranger := topo.ClientConfig(2, topo.WS, client.TransportUDP, client.ModeNetstack, 0)
		sc2, err := dptopo.Connect(topo.WS, stranger)
		if err != nil {
			t.Fatal(err)
		}
		defer sc2.Close()
		pctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		if _, err := sc2.Netstack().Ping(pctx, mustAddr(dptopo.GatewayTun)); err == nil {
			t.Errorf("unknown peer's ping through the gateway: got a reply, want none")
		}
		cancel()

		deadline := time.Now().Add(10 * time.Second)
		for {
			after := metrics(t, topo)
			var missing []string
			for _, reason := range []string{"malformed", "oversized_frame", "unknown_peer"} {
				if counter(after, "bridgetun_tunnel_dropped_packets_total", reason) <= counter(before, "bridgetun_tunnel_dropped_packets_total", reason) {
					missing = append(missing, reason)
				}
			}
			if len(missing) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("dropped-packet counters did not rise for %v\n%s", missing, grep(after, "bridgetun_tunnel_dropped"))
			}
			time.Sleep(100 * time.Millisecond) // polling a remote counter with a deadline
		}
		if !topo.GatewayAlive() {
			t.Fatal("gateway process died after garbage")
		}
		// And a real client still works.
		c := connect(t, topo.WS, topo.ClientConfig(0, topo.WS, client.TransportUDP, client.ModeNetstack, 0))
		checkHTTP(t, dialerFor(topo.WS, c))
	})
}

func newTopology(t *testing.T) *dptopo.Topology {
	t.Helper()
	testkit.RequireRoot(t) // namespace tests (run: sudo go test ./client/)
	bin := filepath.Join(t.TempDir(), "bridgetun-agent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/bridgetun/bridgetun/cmd/bridgetun-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	topo, err := dptopo.New("dp", bin, t.Output())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(topo.Close)
	if err := topo.StartGateway(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	return topo
}

func connect(t *testing.T, ns *nstest.NS, cfg client.Config) *client.Client {
	t.Helper()
	c, err := dptopo.Connect(ns, cfg)
	if err != nil {
		t.Fatalf("connect %s/%s: %v", cfg.Transport, cfg.Mode, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
		if name := c.TUNName(); name != "" {
			if out, err := ns.Output("ip", "link", "show", name); err == nil {
				t.Errorf("TUN %s still present after Close: %s", name, out)
			}
		}
	})
	return c
}

// dialerFor returns how a program on the workstation reaches the cluster:
// the kernel (TUN mode: any socket in ws) or the client's own stack.
func dialerFor(ns *nstest.NS, c *client.Client) dialFunc {
	if s := c.Netstack(); s != nil {
		return s.DialContext
	}
	return ns.DialContext
}

func httpClient(d dialFunc) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: d, DisableKeepAlives: true}, Timeout: 60 * time.Second}
}

// cutTimeout bounds a transfer that survives a stream cut. Recovery is
// usually ~1 s, but about one run in eight stalls 25-40 s in TCP's
// retransmission backoff (a known issue, see the closing notes): the test
// proves the transfer completes intact, the log shows how long it took.
const cutTimeout = 3 * time.Minute

func get(t *testing.T, d dialFunc, url string) string {
	t.Helper()
	resp, err := httpClient(d).Get(url)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
		return ""
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("GET %s: read: %v", url, err)
	}
	return string(b)
}

func checkHTTP(t *testing.T, d dialFunc) {
	body := get(t, d, "http://"+dptopo.SvcIP+"/")
	if !strings.HasPrefix(body, "hello from svc 10.200.2.1:") {
		t.Errorf("GET /: got %q, want hello from svc as seen from the gateway's address", body)
	}
}

// checkBlob downloads 64 MiB and compares its SHA-256 with the server's
// trailer; mid is called once after 8 MiB arrived.
func checkBlob(t *testing.T, d dialFunc, mid func()) {
	hc := httpClient(d)
	if mid != nil {
		hc.Timeout = cutTimeout
	}
	resp, err := hc.Get("http://" + dptopo.SvcIP + "/blob")
	if err != nil {
		t.Errorf("GET /blob: %v", err)
		return
	}
	defer resp.Body.Close()
	h := sha256.New()
	var r io.Reader = resp.Body
	if mid != nil {
		if _, err := io.CopyN(h, r, 8<<20); err != nil {
			t.Errorf("read first 8 MiB: %v", err)
			return
		}
		mid()
	}
	start := time.Now()
	n, err := io.Copy(h, r)
	if mid != nil {
		t.Logf("rest of the transfer after the cut took %s", time.Since(start).Round(10*time.Millisecond))
	}
	if mid != nil {
		n += 8 << 20
	}
	if err != nil {
		t.Errorf("read blob after %d bytes: %v", n, err)
		return
	}
	if n != dptopo.BlobSize {
		t.Errorf("blob size: got %d, want %d", n, dptopo.BlobSize)
	}
	if got, want := hex.EncodeToString(h.Sum(nil)), resp.Trailer.Get("X-Sha256"); got != want || want == "" {
		t.Errorf("blob sha256: got %s, want %s", got, want)
	}
}

func checkUDPEcho(t *testing.T, d dialFunc) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := d(ctx, "udp", dptopo.SvcIP+":7")
	if err != nil {
		t.Fatalf("dial udp echo: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 2000)
	for i := range 5 {
		msg := []byte(fmt.Sprintf("ping %d %d", i, time.Now().UnixNano()))
		// UDP may lose the first datagram while the flow is set up; retry a few times.
		for attempt := 0; ; attempt++ {
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, err := c.Read(buf)
			if err == nil {
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("udp echo: got %q, want %q", buf[:n], msg)
				}
				break
			}
			if attempt == 4 {
				t.Fatalf("udp echo %d: %v", i, err)
			}
		}
	}
}

func checkPing(t *testing.T, ns *nstest.NS, c *client.Client) {
	if s := c.Netstack(); s != nil {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		for _, dst := range []string{dptopo.SvcIP, dptopo.GatewayTun} {
			if _, err := s.Ping(ctx, mustAddr(dst)); err != nil {
				t.Errorf("netstack ping %s: %v", dst, err)
			}
		}
		return
	}
	for _, dst := range []string{dptopo.SvcIP, dptopo.GatewayTun} {
		if out, err := ns.Output("ping", "-c", "1", "-W", "5", dst); err != nil {
			t.Errorf("ping %s from ws: %v\n%s", dst, err, out)
		}
	}
}

// cutter hands out stream connections and can kill the current one, the way
// a dying port-forward would.
type cutter struct {
	dial  tunnel.DialFunc
	mu    sync.Mutex
	cur   net.Conn
	dials atomic.Int64
}

func (c *cutter) Dial(ctx context.Context) (net.Conn, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	c.dials.Add(1)
	c.mu.Lock()
	c.cur = conn
	c.mu.Unlock()
	return conn, nil
}

func (c *cutter) Cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil {
		_ = c.cur.Close()
	}
}

func metrics(t *testing.T, topo *dptopo.Topology) string {
	t.Helper()
	m, err := topo.GatewayMetrics(t.Context())
	if err != nil {
		t.Fatalf("gateway metrics: %v", err)
	}
	return m
}

// counter sums a counter's samples whose labels include reason="<reason>".
func counter(text, name, reason string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\{[^}]*reason="` + regexp.QuoteMeta(reason) + `"[^}]*\} (\S+)$`)
	var sum float64
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum
}

// growingFlows reads the gateway's count of TCP flows given growing buffers.
func growingFlows(t *testing.T, topo *dptopo.Topology) float64 {
	t.Helper()
	const name = "bridgetun_gateway_tcp_flows_growing_buffers_total "
	m, err := topo.GatewayMetrics(t.Context())
	if err != nil {
		t.Fatalf("gateway metrics: %v", err)
	}
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("gateway metrics: %q: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("gateway metrics lack %s", strings.TrimSpace(name))
	return 0
}

func grep(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
