package client

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/bridgetun/bridgetun/internal/promreg"
)

// inboundFilter is the tun.Device wireguard-go gets: it sits where packets
// cross between wireguard-go and the local stack (the kernel TUN, or the
// userspace stack) and lets in from the tunnel only
//
//   - TCP to a port of this workstation's tunnel address that AllowInbound
//     opened (the intercepts' ports, which the gateway dials), and
//   - replies to flows this workstation opened: TCP and UDP packets of a
//     5-tuple it sent on, ICMP echo replies to its echo requests, and ICMP
//     errors (unreachable, packet too big, time exceeded, parameter problem)
//     about a packet of such a flow.
//
// Everything else is dropped and counted in
// bridgetun_tunnel_inbound_dropped_total{proto}. Non-first IP fragments pass:
// the stack cannot reassemble them without the first fragment, which is
// checked, and no later fragment can overwrite its ports.
//
// Both directions see single IP packets: the Linux TUN splits GSO reads and
// coalesces (GRO) writes below this wrapper, and the userspace stack splits
// its GSO segments in its own Read. Per batch, Read takes the flow table's
// lock once to note what went out and Write takes it once to check what came
// in; nothing on the per-packet path allocates.
type inboundFilter struct {
	tun.Device
	local tunnelAddr
	now   func() int64 // monotonic nanoseconds
	ports portSet      // TCP ports open for new connections (AllowInbound)
	flows flowTable

	writeMu sync.Mutex // serialises Write's use of kept
	kept    [][]byte   // the packets of one Write that pass

	dropped [numVerdicts]prometheus.Counter // indexed by verdict; [pass] is nil
}

// Verdicts of the inbound check: pass, or the protocol a drop is counted under.
const (
	pass = iota
	dropTCP
	dropUDP
	dropICMP
	dropOther
	numVerdicts
)

var verdictLabels = [numVerdicts]string{dropTCP: "tcp", dropUDP: "udp", dropICMP: "icmp", dropOther: "other"}

var _ tun.Device = (*inboundFilter)(nil)

// newInboundFilter wraps dev for a workstation whose tunnel address is local.
// reg (nil = no metrics) gets bridgetun_tunnel_inbound_dropped_total.
func newInboundFilter(dev tun.Device, local netip.Addr, reg prometheus.Registerer) (*inboundFilter, error) {
	f := &inboundFilter{Device: dev, local: newTunnelAddr(local), ports: portSet{refs: map[uint16]int{}}, flows: newFlowTable()}
	start := time.Now()
	f.now = func() int64 { return int64(time.Since(start)) }
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bridgetun_tunnel_inbound_dropped_total",
		Help: "Packets from the tunnel the workstation dropped: not to an intercept's port, nor a reply to a flow it opened; by protocol.",
	}, []string{"proto"})
	if reg != nil {
		var err error
		if vec, err = promreg.Register(reg, vec); err != nil {
			return nil, fmt.Errorf("inbound filter: %w", err)
		}
	}
	for v := dropTCP; v < numVerdicts; v++ {
		f.dropped[v] = vec.WithLabelValues(verdictLabels[v]) // resolved once: Add is all the hot path does
	}
	return f, nil
}

// AllowInbound opens TCP port for new connections from the tunnel to the
// tunnel address. Calls are counted: the port stays open until as many
// RevokeInbound calls.
func (f *inboundFilter) AllowInbound(port uint16) { f.ports.allow(port) }

// RevokeInbound undoes one AllowInbound. Connections already open keep
// working (their packets are flows the workstation sent on); new ones are dropped.
func (f *inboundFilter) RevokeInbound(port uint16) { f.ports.revoke(port) }

// Read hands wireguard-go what the local stack sends into the tunnel, and
// notes each packet's flow so that its replies may come back.
func (f *inboundFilter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := f.Device.Read(bufs, sizes, offset)
	if n > 0 {
		now := f.now()
		f.flows.mu.Lock()
		for i := range n {
			f.noteOutbound(bufs[i][offset:offset+sizes[i]], now)
		}
		f.flows.mu.Unlock()
	}
	return n, err
}

// Write hands the local stack what came from the tunnel, less what the
// filter drops. It returns len(bufs) when every packet it passed was written.
func (f *inboundFilter) Write(bufs [][]byte, offset int) (int, error) {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	var drops [numVerdicts]int
	copying := false // after the first drop, what passes is copied to kept
	now := f.now()
	f.flows.mu.Lock()
	for i, b := range bufs {
		v := f.checkInbound(b[offset:], now)
		switch {
		case v != pass:
			drops[v]++
			if !copying {
				f.kept, copying = append(f.kept[:0], bufs[:i]...), true
			}
		case copying:
			f.kept = append(f.kept, b)
		}
	}
	f.flows.mu.Unlock()
	out := bufs
	if copying {
		out = f.kept
		for v := dropTCP; v < numVerdicts; v++ {
			if drops[v] > 0 {
				f.dropped[v].Add(float64(drops[v]))
			}
		}
	}
	if len(out) == 0 {
		return len(bufs), nil
	}
	n, err := f.Device.Write(out, offset)
	clear(f.kept) // keep no reference to the caller's buffers
	if err != nil {
		return n, err
	}
	return len(bufs), nil
}

// portSet is a set of ports with a count per port. Lookups are lock-free
// (one atomic load); changes take mu.
type portSet struct {
	bits [1 << 10]atomic.Uint64 // bit p: port p is in the set
	mu   sync.Mutex
	refs map[uint16]int // allow calls per port not yet revoked; guarded by mu
}

func (s *portSet) allow(port uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[port]++
	s.bits[port>>6].Or(1 << (port & 63))
}

func (s *portSet) revoke(port uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch n := s.refs[port]; {
	case n > 1:
		s.refs[port] = n - 1
	case n == 1:
		delete(s.refs, port)
		s.bits[port>>6].And(^uint64(1 << (port & 63)))
	}
}

func (s *portSet) open(port uint16) bool {
	return s.bits[port>>6].Load()&(1<<(port&63)) != 0
}

// tunnelAddr is the workstation's tunnel address as the packet parser sees it.
type tunnelAddr struct {
	v4         [4]byte
	v6         [16]byte
	has4, has6 bool
}

func newTunnelAddr(a netip.Addr) tunnelAddr {
	var t tunnelAddr
	if a = a.Unmap(); a.Is4() {
		t.v4, t.has4 = a.As4(), true
	} else if a.Is6() {
		t.v6, t.has6 = a.As16(), true
	}
	return t
}

// is reports whether addr (4 or 16 bytes) is the tunnel address.
func (t *tunnelAddr) is(addr []byte) bool {
	switch len(addr) {
	case 4:
		return t.has4 && [4]byte(addr) == t.v4
	case 16:
		return t.has6 && [16]byte(addr) == t.v6
	}
	return false
}
