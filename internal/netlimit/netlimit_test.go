package netlimit

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// server accepts on a capped loopback listener and greets each connection
// with "hi\n"; the test closes accepted connections through served.
type server struct {
	ln     net.Listener
	served chan net.Conn
}

func newServer(t *testing.T, max int, refused prometheus.Counter) *server {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: Listener(raw, max, refused), served: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hi\n")
			s.served <- c
		}
	}()
	t.Cleanup(func() {
		s.ln.Close()
		<-done
		close(s.served)
		for c := range s.served {
			c.Close()
		}
	})
	return s
}

// greet dials s and reports whether it was served (greeted) or refused
// (closed without a greeting).
func (s *server) greet(t *testing.T) (net.Conn, bool) {
	t.Helper()
	c, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	switch {
	case err == nil && line == "hi\n":
		return c, true
	case errors.Is(err, io.EOF), isReset(err):
		return c, false
	}
	t.Fatalf("read: got %q, %v; want a greeting or the connection closed", line, err)
	return nil, false
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// TestListenerCap: with a cap of 2, two connections are served, the third
// is closed at once and counted; closing a served one frees its place.
func TestListenerCap(t *testing.T) {
	reg := prometheus.NewRegistry()
	refused := Refused(reg, "test")
	s := newServer(t, 2, refused)
	for i := range 2 {
		if _, ok := s.greet(t); !ok {
			t.Fatalf("connection %d: refused, want served under the cap of 2", i+1)
		}
	}
	if _, ok := s.greet(t); ok {
		t.Fatal("third connection: served, want refused at the cap of 2")
	}
	if got := testutil.ToFloat64(refused); got != 1 {
		t.Errorf("bridgetun_connections_refused_total{server=test}: got %v, want 1", got)
	}
	// Closing a served connection (twice: the place is freed once) lets
	// exactly one more in.
	first := <-s.served
	first.Close()
	first.Close()
	if _, ok := s.greet(t); !ok {
		t.Fatal("after a close: refused, want served")
	}
	if _, ok := s.greet(t); ok {
		t.Fatal("after one close, two more: the second was served, want refused")
	}
	if got := testutil.ToFloat64(refused); got != 2 {
		t.Errorf("refusals: got %v, want 2", got)
	}
}

// TestConnKeepsSocket: a counted connection still half-closes, and Unwrap
// reaches its *net.TCPConn (splice(2), SO_PEERCRED).
func TestConnKeepsSocket(t *testing.T) {
	s := newServer(t, 1, nil)
	c, _ := s.greet(t)
	sc := <-s.served
	cw, ok := sc.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T cannot half-close", sc)
	}
	if _, ok := Unwrap(sc).(*net.TCPConn); !ok {
		t.Fatalf("Unwrap(%T) = %T, want *net.TCPConn", sc, Unwrap(sc))
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("after the server's half-close: read %q, %v; want EOF", b, err)
	}
	if _, err := io.WriteString(c, "still open"); err != nil {
		t.Fatalf("the client's direction closed too: %v", err)
	}
	b := make([]byte, 10)
	sc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(sc, b); err != nil || string(b) != "still open" {
		t.Fatalf("server read %q, %v", b, err)
	}
	sc.Close()
}

// TestRefusedSharesOneFamily: servers in one registry share the metric,
// one series each; a nil registry counts nothing.
func TestRefusedSharesOneFamily(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := Refused(reg, "control"), Refused(reg, "relay")
	a.Inc()
	b.Inc()
	b.Inc()
	if n, err := testutil.GatherAndCount(reg, "bridgetun_connections_refused_total"); err != nil || n != 2 {
		t.Fatalf("series: got %d, %v; want 2", n, err)
	}
	if got := testutil.ToFloat64(Refused(reg, "relay")); got != 2 {
		t.Errorf("relay refusals: got %v, want 2", got)
	}
	if Refused(nil, "x") != nil {
		t.Error("Refused(nil): want nil")
	}
}
