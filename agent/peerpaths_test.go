package agent

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/bridgetun/bridgetun/tunnel"
)

// TestPeerPaths: workstations whose endpoint is an accepted stream are on
// the stream, UDP ones and unknown addresses are not; the device is asked
// once for many questions, again after a stream is accepted, and a failing
// status keeps the last answer.
func TestPeerPaths(t *testing.T) {
	var p peerPaths
	if p.onStream(netip.MustParseAddr("198.19.0.2")) {
		t.Fatal("before the device exists: on the stream, want not")
	}
	calls := 0
	var fail error
	peers := []tunnel.PeerStatus{
		{Endpoint: "stream:7/127.0.0.1:41234", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.19.0.2/32")}},
		{Endpoint: "10.88.0.5:51820", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.19.0.3/32")}},
		{Endpoint: "", AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.19.0.4/32")}},
	}
	p.use(func() ([]tunnel.PeerStatus, error) { calls++; return peers, fail })
	for _, tc := range []struct {
		addr   string
		stream bool
	}{{"198.19.0.2", true}, {"198.19.0.3", false}, {"198.19.0.4", false}, {"198.19.0.9", false}, {"::ffff:198.19.0.2", true}} {
		if got := p.onStream(netip.MustParseAddr(tc.addr)); got != tc.stream {
			t.Errorf("%s: on the stream %v, want %v", tc.addr, got, tc.stream)
		}
	}
	if calls != 1 {
		t.Errorf("device status read %d times for five questions within %s, want once", calls, peerPathsMaxAge)
	}

	// 198.19.0.3 moves to the stream: the accept makes the next question refresh.
	peers[1].Endpoint = "stream:8/127.0.0.1:41300"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			c.Close()
		}
	}()
	c, err := streamAccepts{Listener: ln, onAccept: p.invalidate}.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if !p.onStream(netip.MustParseAddr("198.19.0.3")) {
		t.Error("after a stream was accepted: 198.19.0.3 not on the stream, want it")
	}
	if calls != 2 {
		t.Errorf("device status read %d times, want 2", calls)
	}

	fail = errors.New("device closed")
	p.invalidate()
	if !p.onStream(netip.MustParseAddr("198.19.0.2")) {
		t.Error("status failing: the last answer was lost")
	}
}
