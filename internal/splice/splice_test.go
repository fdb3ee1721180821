package splice

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/netlimit"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// Every test joins a client and a server through one Relay:
//
//	client ──conn── a ═Relay═ b ──conn── server
//
// over real loopback TCP, Unix sockets, net.Pipe and a BufferedConn, so both
// the splice(2) path and the pooled-buffer path run.

// rig is one relay's four ends; prefix is what a already holds buffered
// (a BufferedConn), which b's side receives before the client's bytes.
type rig struct {
	client, a, b, server net.Conn
	prefix               string
}

// transport builds a rig. halfClose: the client's side can half-close.
type transport struct {
	name      string
	halfClose bool
	newRig    func(t *testing.T) rig
}

var transports = []transport{
	{"tcp-tcp", true, func(t *testing.T) rig {
		c, a := tcpPair(t)
		b, s := tcpPair(t)
		return rig{client: c, a: a, b: b, server: s}
	}},
	{"unix-tcp", true, func(t *testing.T) rig {
		c, a := unixPair(t)
		b, s := tcpPair(t)
		return rig{client: c, a: a, b: b, server: s}
	}},
	{"buffered-tcp", true, func(t *testing.T) rig {
		c, a := tcpPair(t)
		b, s := tcpPair(t)
		const head = "HEAD "
		return rig{client: c, a: &BufferedConn{Conn: a, R: io.MultiReader(strings.NewReader(head), a)}, b: b, server: s, prefix: head}
	}},
	{"capped-tcp", true, func(t *testing.T) rig { // accepted through internal/netlimit's cap
		c, a := cappedPair(t)
		s, b := cappedPair(t)
		return rig{client: c, a: a, b: b, server: s}
	}},
	{"pipe-tcp", false, func(t *testing.T) rig {
		c, a := net.Pipe()
		t.Cleanup(func() { c.Close(); a.Close() })
		b, s := tcpPair(t)
		return rig{client: c, a: a, b: b, server: s}
	}},
}

// relayResult is what Relay returned.
type relayResult struct {
	st  Stats
	err error
}

// start runs Relay(ctx, r.a, r.b) and delivers its result.
func start(ctx context.Context, r rig) <-chan relayResult {
	done := make(chan relayResult, 1)
	go func() {
		st, err := Relay(ctx, r.a, r.b)
		done <- relayResult{st, err}
	}()
	return done
}

// wait returns Relay's result, failing the test if it takes longer than 5 s.
func wait(t *testing.T, done <-chan relayResult) relayResult {
	t.Helper()
	select {
	case res := <-done:
		return res
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return within 5s")
		return relayResult{}
	}
}

// TestRelayHalfClose: the client's EOF reaches the server as EOF, and the
// server can still answer; a clean end returns nil and counts every byte.
// A client side that cannot half-close (net.Pipe) ends the relay cleanly
// at its EOF instead.
func TestRelayHalfClose(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkNoLeak(t)
			r := tr.newRig(t)
			up, down := random(t, 256<<10), random(t, 64<<10)
			done := start(t.Context(), r)

			var wg sync.WaitGroup
			var writeErr error
			wg.Go(func() {
				if _, writeErr = r.client.Write(up); writeErr != nil {
					return
				}
				if tr.halfClose {
					writeErr = r.client.(closeWriter).CloseWrite()
				} else {
					writeErr = r.client.Close()
				}
			})
			deadline(r.server, r.client)
			got, err := io.ReadAll(r.server)
			if err != nil {
				t.Fatalf("server read: %v", err)
			}
			if want := append([]byte(r.prefix), up...); !bytes.Equal(got, want) {
				t.Fatalf("server got %d bytes, want %d (the prefix and the client's bytes)", len(got), len(want))
			}
			wg.Wait()
			if writeErr != nil {
				t.Fatalf("client write: %v", writeErr)
			}
			want := Stats{AToB: int64(len(r.prefix) + len(up))}
			if tr.halfClose {
				// The server answers after the client's EOF.
				if _, err := r.server.Write(down); err != nil {
					t.Fatalf("server answer after the client's half-close: %v", err)
				}
				r.server.Close()
				back, err := io.ReadAll(r.client)
				if err != nil {
					t.Fatalf("client read: %v", err)
				}
				if !bytes.Equal(back, down) {
					t.Fatalf("client got %d bytes, want the server's %d", len(back), len(down))
				}
				want.BToA = int64(len(down))
			} else {
				// The server's end reaches a side that cannot half-close:
				// the relay ends there, cleanly.
				r.server.Close()
			}
			res := wait(t, done)
			if res.err != nil {
				t.Errorf("Relay: got %v, want nil for a clean end", res.err)
			}
			if res.st != want {
				t.Errorf("Stats: got %+v, want %+v", res.st, want)
			}
			checkClosed(t, r)
		})
	}
}

// TestRelayErrorEndsBoth: a reset on the server's side, or a failing read on
// the client's, ends both directions at once — the direction still waiting
// for the other side's bytes does not hang — and Relay returns that error.
func TestRelayErrorEndsBoth(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tr := range transports {
		t.Run(tr.name+"/server-reset", func(t *testing.T) {
			checkNoLeak(t)
			r := tr.newRig(t)
			done := start(t.Context(), r)
			roundTrip(t, r)
			// RST instead of FIN: linger 0.
			if err := r.server.(*net.TCPConn).SetLinger(0); err != nil {
				t.Fatal(err)
			}
			r.server.Close()
			res := wait(t, done)
			if !errors.Is(res.err, syscall.ECONNRESET) {
				t.Errorf("Relay: got %v, want ECONNRESET", res.err)
			}
			if want := (Stats{AToB: int64(len(r.prefix)) + 1, BToA: 1}); res.st != want {
				t.Errorf("Stats: got %+v, want %+v", res.st, want)
			}
			// The client, which never closed, sees its side end.
			deadline(r.client)
			if _, err := io.ReadAll(r.client); isTimeout(err) {
				t.Errorf("client read after the server's reset: %v, want its end", err)
			}
			checkClosed(t, r)
		})
		t.Run(tr.name+"/client-read-error", func(t *testing.T) {
			checkNoLeak(t)
			r := tr.newRig(t)
			fail := make(chan struct{})
			r.a = &failingConn{Conn: r.a, fail: fail, err: errBoom}
			done := start(t.Context(), r)
			close(fail)
			res := wait(t, done)
			if !errors.Is(res.err, errBoom) {
				t.Errorf("Relay: got %v, want %v", res.err, errBoom)
			}
			// The server, waiting for bytes that never come, sees its side end.
			deadline(r.server)
			if _, err := io.ReadAll(r.server); isTimeout(err) {
				t.Errorf("server read after the client side failed: %v, want its end", err)
			}
			checkClosed(t, r)
		})
	}
}

// TestRelayCancel: ctx ending closes both sides promptly, though neither
// peer closed anything, and Relay returns ctx.Err().
func TestRelayCancel(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			checkNoLeak(t)
			r := tr.newRig(t)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := start(ctx, r)
			roundTrip(t, r)
			cancel()
			res := wait(t, done)
			if !errors.Is(res.err, context.Canceled) || res.err != ctx.Err() {
				t.Errorf("Relay: got %v, want ctx.Err() = %v", res.err, ctx.Err())
			}
			if want := (Stats{AToB: int64(len(r.prefix)) + 1, BToA: 1}); res.st != want {
				t.Errorf("Stats: got %+v, want %+v", res.st, want)
			}
			deadline(r.client, r.server)
			for name, c := range map[string]net.Conn{"client": r.client, "server": r.server} {
				if _, err := io.ReadAll(c); isTimeout(err) {
					t.Errorf("%s read after cancel: %v, want its end", name, err)
				}
			}
			checkClosed(t, r)
		})
	}
	t.Run("already-cancelled", func(t *testing.T) {
		checkNoLeak(t)
		r := transports[0].newRig(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		res := wait(t, start(ctx, r))
		if !errors.Is(res.err, context.Canceled) {
			t.Errorf("Relay: got %v, want %v", res.err, context.Canceled)
		}
		checkClosed(t, r)
	})
}

// TestKernelPair pins which pairs io.Copy hands to splice(2), and that the
// others go through the pooled buffer.
func TestKernelPair(t *testing.T) {
	tc, _ := tcpPair(t)
	uc, _ := unixPair(t)
	p, _ := net.Pipe()
	buf := &BufferedConn{Conn: tc, R: tc}
	_, capped := cappedPair(t)
	for _, row := range []struct {
		name     string
		dst, src net.Conn
		want     bool
	}{
		{"tcp<-tcp", tc, tc, true},
		{"tcp<-unix", tc, uc, true},
		{"unix<-tcp", uc, tc, true},
		{"unix<-unix", uc, uc, false},
		{"tcp<-pipe", tc, p, false},
		{"pipe<-tcp", p, tc, false},
		{"tcp<-buffered", tc, buf, false},
		{"buffered<-tcp", buf, tc, false},
		{"capped<-capped", unwrap(capped), unwrap(capped), true},
		{"capped wrapper itself", capped, tc, false},
	} {
		if got := kernelPair(row.dst, row.src); got != row.want {
			t.Errorf("kernelPair(%s): got %v, want %v", row.name, got, row.want)
		}
	}
	if got, want := kernelPath(tc, tc), runtime.GOOS == "linux"; got != want {
		t.Errorf("kernelPath(tcp<-tcp) on %s: got %v, want %v", runtime.GOOS, got, want)
	}
}

// TestRelayerBuffers: a Relayer's large buffers serve bulk copies only: a
// quiet flow's small round trips take none (thousands of idle flows must
// not each pin one), a bulk transfer takes one, and io.Copy's kernel fast
// path takes none at all.
func TestRelayerBuffers(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			r := tr.newRig(t)
			rl := NewRelayer(64 << 10)
			var made atomic.Int32
			newBuf := rl.pool.New
			rl.pool.New = func() any { made.Add(1); return newBuf() }
			done := make(chan error, 1)
			go func() { _, err := rl.Relay(t.Context(), r.a, r.b); done <- err }()
			roundTrip(t, r)
			if got := made.Load(); got != 0 {
				t.Errorf("large buffers after small round trips: got %d, want 0", got)
			}
			kernel := kernelPath(unwrap(r.b), unwrap(r.a)) && kernelPath(unwrap(r.a), unwrap(r.b))
			bulk := bytes.Repeat([]byte("b"), 1<<20)
			var wg sync.WaitGroup
			wg.Go(func() { _, _ = r.client.Write(bulk) })
			got := make([]byte, len(bulk))
			if _, err := io.ReadFull(r.server, got); err != nil || !bytes.Equal(got, bulk) {
				t.Fatalf("bulk: read %v, intact %v", err, bytes.Equal(got, bulk))
			}
			wg.Wait()
			r.client.Close()
			r.server.Close()
			if err := <-done; err != nil {
				t.Fatalf("Relay: %v", err)
			}
			if got := made.Load(); kernel && got != 0 || !kernel && got == 0 {
				t.Errorf("large buffers after a bulk transfer: got %d, want none only on the kernel path (kernel path: %v)", got, kernel)
			}
		})
	}
}

// roundTrip sends one byte each way through the relay, so it is running.
func roundTrip(t *testing.T, r rig) {
	t.Helper()
	deadline(r.client, r.server)
	want := r.prefix + "x"
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() { _, werr = r.client.Write([]byte("x")) })
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r.server, got); err != nil || string(got) != want {
		t.Fatalf("server read: got %q, %v; want %q", got, err, want)
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("client write: %v", werr)
	}
	wg.Go(func() { _, werr = r.server.Write([]byte("y")) })
	if _, err := io.ReadFull(r.client, got[:1]); err != nil || got[0] != 'y' {
		t.Fatalf("client read: got %q, %v; want %q", got[:1], err, "y")
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("server write: %v", werr)
	}
	for _, c := range []net.Conn{r.client, r.server} {
		_ = c.SetDeadline(time.Time{})
	}
}

// checkClosed fails unless Relay closed both of its ends.
func checkClosed(t *testing.T, r rig) {
	t.Helper()
	for name, c := range map[string]net.Conn{"a": r.a, "b": r.b} {
		if _, err := c.Write([]byte("z")); err == nil {
			t.Errorf("write on %s after Relay returned: got nil, want an error (closed)", name)
		}
	}
}

// checkNoLeak fails the test if, once it ends, more goroutines run than at
// its start (polling: exiting goroutines take a moment to be counted out).
// Tests that use it must not run in parallel.
func checkNoLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		testkit.WaitFor(t, 5*time.Second, "goroutines back to the count before the test", func() bool {
			return runtime.NumGoroutine() <= before
		})
	})
}

// deadline bounds the test's reads and writes on cs: a relay that hangs
// fails the test instead of hanging it.
func deadline(cs ...net.Conn) {
	for _, c := range cs {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String()) // completes in the backlog
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// cappedPair is tcpPair with the accepted end counted by a
// netlimit.Listener (a wrapper that keeps the socket reachable).
func cappedPair(t *testing.T) (*net.TCPConn, net.Conn) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := netlimit.Listener(raw, 1, nil)
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s
}

// unixPair returns both ends of one stream Unix socket connection.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.UnixConn), s.(*net.UnixConn)
}

// failingConn's Read fails with err once fail is closed, as a broken
// transport would; writes go to the Conn.
type failingConn struct {
	net.Conn
	fail <-chan struct{}
	err  error
}

func (c *failingConn) Read(p []byte) (int, error) {
	<-c.fail
	return 0, c.err
}
