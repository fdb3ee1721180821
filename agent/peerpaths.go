package agent

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/tunnel"
)

// peerPaths tells which workstations reach the gateway over the stream
// transport now, from the device's own view of each peer's endpoint (the
// auto transport moves a peer between UDP and the stream at any time). The
// gateway stack asks once per new TCP flow (netstack.GatewayConfig.
// GrowBuffers); a device status is a UAPI round trip over every peer, so
// the answer is refreshed at most every peerPathsMaxAge, and at once after
// a stream is accepted (a workstation may have moved to it; one that moved
// to UDP keeps growing buffers until the next refresh, which is harmless).
type peerPaths struct {
	mu     sync.Mutex
	status func() ([]tunnel.PeerStatus, error) // nil until the device exists
	at     time.Time
	stream map[netip.Addr]bool // tunnel address → on the stream
}

const peerPathsMaxAge = time.Second

// use sets where peer endpoints are read from.
func (p *peerPaths) use(status func() ([]tunnel.PeerStatus, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.at = status, time.Time{}
}

// invalidate makes the next question refresh the answer.
func (p *peerPaths) invalidate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.at = time.Time{}
}

// streamAccepts calls onAccept for each connection its Listener accepts.
type streamAccepts struct {
	net.Listener
	onAccept func()
}

func (l streamAccepts) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.onAccept()
	}
	return c, err
}

// onStream says whether the workstation with tunnel address a is on the
// stream transport; false when unknown (a fixed-buffer flow, the safe side).
func (p *peerPaths) onStream(a netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != nil && time.Since(p.at) >= peerPathsMaxAge {
		if sts, err := p.status(); err == nil {
			m := make(map[netip.Addr]bool, len(sts))
			for _, st := range sts {
				if !tunnel.IsStreamEndpoint(st.Endpoint) {
					continue
				}
				for _, pfx := range st.AllowedIPs {
					if pfx.IsSingleIP() {
						m[pfx.Addr()] = true
					}
				}
			}
			p.stream, p.at = m, time.Now()
		}
	}
	return p.stream[a.Unmap()]
}
