package tunnel

import (
	"bufio"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// transportMsg is a frame the server's filter passes as a WireGuard
// transport message, tagged so the test can tell them apart.
func transportMsg(tag byte) []byte {
	p := make([]byte, msgTransportMinSize)
	binary.LittleEndian.PutUint32(p, msgTransport)
	p[len(p)-1] = tag
	return p
}

func TestStreamServerGroupsStreamsByHello(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := NewStreamServerBind(StreamServerConfig{Listener: ln})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown() })

	dial := func(hello []byte, tag byte) *bufio.Reader {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		w := bufio.NewWriter(c)
		if hello != nil {
			if err := WriteFrame(w, hello); err != nil {
				t.Fatal(err)
			}
		}
		if err := WriteFrame(w, transportMsg(tag)); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		return bufio.NewReader(c)
	}
	recv := func() (byte, conn.Endpoint) {
		t.Helper()
		bufs, sizes, eps := [][]byte{make([]byte, 100)}, make([]int, 1), make([]conn.Endpoint, 1)
		n, err := fns[0](bufs, sizes, eps)
		if err != nil || n != 1 {
			t.Fatalf("receive: %d packets, %v", n, err)
		}
		return bufs[0][sizes[0]-1], eps[0]
	}
	var g1, g2 [groupIDSize]byte
	g1[0], g2[0] = 1, 2
	r1 := dial(helloFrame(g1), 'a')
	_, ep1 := recv()
	r2 := dial(helloFrame(g1), 'b')
	_, ep2 := recv()
	r3 := dial(helloFrame(g2), 'c')
	_, ep3 := recv()
	r4 := dial(nil, 'd') // no hello: a group of its own
	_, ep4 := recv()
	if ep1 != ep2 {
		t.Errorf("two streams of one group answered as %v and %v, want one endpoint", ep1, ep2)
	}
	if ep3 == ep1 || ep4 == ep1 || ep4 == ep3 {
		t.Errorf("other groups share an endpoint: %v %v %v", ep1, ep3, ep4)
	}

	// Sends to the group's endpoint alternate over its two streams; no
	// frame reaches the other groups.
	for i := range 4 {
		if err := b.Send([][]byte{transportMsg(byte('0' + i))}, ep1); err != nil {
			t.Fatal(err)
		}
	}
	got := map[*bufio.Reader]int{}
	for _, r := range []*bufio.Reader{r1, r2} {
		for range 2 {
			buf := make([]byte, 100)
			if _, err := ReadFrame(r, buf); err != nil {
				t.Fatalf("read from group stream: %v", err)
			}
			got[r]++
		}
	}
	if got[r1] != 2 || got[r2] != 2 {
		t.Errorf("group streams got %d and %d frames, want 2 each", got[r1], got[r2])
	}
	for _, r := range []*bufio.Reader{r3, r4} {
		if n := r.Buffered(); n != 0 {
			t.Errorf("a stream of another group holds %d bytes", n)
		}
	}
	if err := b.Send([][]byte{transportMsg('x')}, ep3); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadFrame(r3, make([]byte, 100)); err != nil {
		t.Errorf("the other group's stream: %v", err)
	}
}
