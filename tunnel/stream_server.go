package tunnel

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
)

// rxQueueLen bounds packets read from streams but not yet taken by
// wireguard-go; a full queue blocks the stream readers, which pushes back
// on the senders through TCP flow control instead of dropping.
const rxQueueLen = 1024

// StreamServerConfig configures the server side of the stream transport.
type StreamServerConfig struct {
	Listener   net.Listener          // closed by Shutdown (and Device.Close), never by Close
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// StreamServerBind is the server side of the stream transport: every
// accepted stream is an endpoint, and wireguard-go maps endpoints to peers
// from authenticated packets, so a peer that reconnects on a new stream is
// followed like a roaming UDP peer.
//
// Lifecycle: wireguard-go calls Close then Open on every bind update, so
// Close must not destroy the listener. Close stops delivery, closes every
// accepted stream (clients redial) and refuses new ones until the next
// Open. The accept goroutine starts at the first Open and lives until
// Shutdown, which closes the listener and waits for every goroutine.
type StreamServerBind struct {
	ln  net.Listener
	log *slog.Logger
	m   *metrics
	rx  chan rxPacket

	mu        sync.Mutex
	sess      *serverSession         // nil while closed
	conns     map[uint64]*serverConn // by connection id
	groups    map[uint64]*connGroup  // by endpoint id: the streams answering one endpoint
	byHello   map[[groupIDSize]byte]uint64
	nextID    uint64
	accepting bool
	shutdown  bool
	wg        sync.WaitGroup // accept loop and stream readers
}

var (
	_ conn.Bind        = (*StreamServerBind)(nil)
	_ endpointRewriter = (*StreamServerBind)(nil)
	_ shutdowner       = (*StreamServerBind)(nil)
	_ conn.Endpoint    = (*serverEndpoint)(nil)
)

type serverSession struct {
	closed chan struct{}
}

type serverConn struct {
	*streamConn
	id uint64
	ep *serverEndpoint // the connection's own, or its group's after a hello (b.mu)
}

// connGroup is the streams one endpoint is answered over: one, or those
// whose hello named the same group. Send goes round-robin over them.
type connGroup struct {
	ep      *serverEndpoint
	hello   [groupIDSize]byte
	named   bool // hello is set
	members []*serverConn
	next    int
}

type rxPacket struct {
	buf *[]byte
	ep  *serverEndpoint
}

// NewStreamServerBind returns a closed server bind on cfg.Listener.
func NewStreamServerBind(cfg StreamServerConfig) *StreamServerBind {
	return &StreamServerBind{
		ln:      cfg.Listener,
		log:     obs.Component(discardLogger(cfg.Log), "stream_server_bind"),
		m:       mustMetrics(cfg.Registerer),
		rx:      make(chan rxPacket, rxQueueLen),
		conns:   make(map[uint64]*serverConn),
		groups:  make(map[uint64]*connGroup),
		byHello: make(map[[groupIDSize]byte]uint64),
	}
}

// Open starts (or resumes) accepting streams. The port is meaningless.
func (b *StreamServerBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.shutdown {
		return nil, 0, fmt.Errorf("open stream server bind: %w", net.ErrClosed)
	}
	if b.sess != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	s := &serverSession{closed: make(chan struct{})}
	b.sess = s
	if !b.accepting {
		b.accepting = true
		b.wg.Add(1)
		go b.acceptLoop()
	}
	return []conn.ReceiveFunc{b.receiveFunc(s)}, port, nil
}

// Close stops delivery and closes every accepted stream; see the type doc.
func (b *StreamServerBind) Close() error {
	b.mu.Lock()
	s := b.sess
	b.sess = nil
	conns := make([]*serverConn, 0, len(b.conns))
	for _, sc := range b.conns {
		conns = append(conns, sc)
	}
	b.mu.Unlock()
	if s == nil {
		return nil
	}
	close(s.closed)
	for _, sc := range conns {
		sc.fail(net.ErrClosed)
	}
	for { // drop what the old streams queued
		select {
		case p := <-b.rx:
			putPacketBuf(p.buf)
		default:
			return nil
		}
	}
}

// Shutdown closes the bind and the listener and waits for every goroutine
// the bind started. It is idempotent; Device.Close calls it.
func (b *StreamServerBind) Shutdown() error {
	b.mu.Lock()
	already := b.shutdown
	b.shutdown = true
	b.mu.Unlock()
	b.Close()
	var err error
	if !already {
		if err = b.ln.Close(); errors.Is(err, net.ErrClosed) {
			err = nil
		}
	}
	b.wg.Wait()
	if err != nil {
		return fmt.Errorf("shutdown stream server bind: close listener %s: %w", b.ln.Addr(), err)
	}
	return nil
}

func (b *StreamServerBind) SetMark(uint32) error { return nil }
func (b *StreamServerBind) BatchSize() int       { return streamBatchSize }

// ParseEndpoint fails: the server only learns endpoints from streams.
func (b *StreamServerBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	return nil, fmt.Errorf("parse endpoint %q: stream server endpoints are learned from incoming streams", s)
}

// peerEndpoint drops configured endpoints (see ParseEndpoint).
func (b *StreamServerBind) peerEndpoint(string) string { return "" }

// Send writes bufs to the stream ep names, in one write.
func (b *StreamServerBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	sep, ok := ep.(*serverEndpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	var sc *serverConn
	if g := b.groups[sep.id]; g != nil && len(g.members) > 0 {
		g.next = (g.next + 1) % len(g.members)
		sc = g.members[g.next]
	}
	b.mu.Unlock()
	if sc == nil {
		// Like a datagram to a host that went away: dropped and counted,
		// not an error (wireguard-go would log every packet at error level
		// until the peer reconnects or expires).
		b.m.dropped.WithLabelValues(dropStreamDown).Add(float64(len(bufs)))
		return nil
	}
	if err := sc.writeBatch(bufs); err != nil {
		sc.fail(err)
		return fmt.Errorf("send to %s: %w", sep, err)
	}
	return nil
}

func (b *StreamServerBind) receiveFunc(s *serverSession) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p rxPacket
		select {
		case <-s.closed:
			return 0, net.ErrClosed
		case p = <-b.rx:
		}
		n := 0
		for {
			sizes[n] = copy(bufs[n], *p.buf)
			eps[n] = p.ep
			putPacketBuf(p.buf)
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case p = <-b.rx:
			default:
				return n, nil
			}
		}
	}
}

func (b *StreamServerBind) acceptLoop() {
	defer b.wg.Done()
	var delay time.Duration
	for {
		c, err := b.ln.Accept()
		if err != nil {
			b.mu.Lock()
			down := b.shutdown
			b.mu.Unlock()
			if down || errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary failures such as EMFILE: back off like net/http.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			b.log.Warn("accept stream failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		b.mu.Lock()
		if b.sess == nil || b.shutdown {
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.nextID++
		sc := &serverConn{streamConn: newStreamConn(c), id: b.nextID, ep: newServerEndpoint(b.nextID, c.RemoteAddr())}
		b.conns[sc.id] = sc
		b.groups[sc.ep.id] = &connGroup{ep: sc.ep, members: []*serverConn{sc}}
		b.wg.Add(1)
		b.mu.Unlock()
		if nd, ok := c.(interface{ SetNoDelay(bool) error }); ok {
			nd.SetNoDelay(true)
		}
		b.log.Info("stream accepted", "endpoint", sc.ep.String())
		go b.readLoop(sc)
	}
}

// readLoop feeds one stream's frames to the receive queue. A frame that is
// not a WireGuard message means the stream is garbage or out of step, so
// the stream is closed rather than resynchronised.
func (b *StreamServerBind) readLoop(sc *serverConn) {
	defer b.wg.Done()
	defer func() {
		sc.fail(nil)
		b.mu.Lock()
		delete(b.conns, sc.id)
		b.leaveGroupLocked(sc)
		b.mu.Unlock()
	}()
	for first := true; ; first = false {
		pb, err := readPacket(sc.r)
		if err != nil {
			var reason string
			switch {
			case sc.isDead():
				return
			case errors.Is(err, ErrFrameTooLarge):
				reason = dropOversized
			case errors.Is(err, io.ErrUnexpectedEOF):
				reason = dropMalformed // stream ended inside a frame
			default:
				b.log.Info("stream closed", "endpoint", sc.ep.String(), "err", err)
				return
			}
			b.m.dropped.WithLabelValues(reason).Inc()
			b.log.Warn("closing stream: bad frame", "endpoint", sc.ep.String(), "err", err)
			return
		}
		if id, ok := parseHello(*pb); ok && first {
			putPacketBuf(pb)
			if !b.joinGroup(sc, id) {
				b.log.Warn("closing stream: its group is full", "endpoint", sc.ep.String())
				return
			}
			continue
		}
		if !validMessage(*pb) {
			b.m.dropped.WithLabelValues(dropMalformed).Inc()
			b.log.Warn("closing stream: not a WireGuard message", "endpoint", sc.ep.String(), "len", len(*pb))
			putPacketBuf(pb)
			return
		}
		p := rxPacket{buf: pb, ep: sc.ep} // only this goroutine changes sc.ep (joinGroup)
		select {
		case b.rx <- p:
		case <-sc.dead:
			putPacketBuf(p.buf)
			return
		}
	}
}

// readPacket reads one frame straight into a pooled buffer (one copy
// fewer than reading into a scratch buffer), with ReadFrame's errors.
func readPacket(r *bufio.Reader) (*[]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > maxMessageSize {
		return nil, fmt.Errorf("read frame of %d bytes, at most %d: %w", n, maxMessageSize, ErrFrameTooLarge)
	}
	pb := getPacketBuf(n)
	if _, err := io.ReadFull(r, *pb); err != nil {
		putPacketBuf(pb)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return pb, nil
}

// joinGroup moves sc from its own group into the one its hello names
// (creating it under sc's endpoint), false if that group is full.
func (b *StreamServerBind) joinGroup(sc *serverConn, id [groupIDSize]byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	epID, ok := b.byHello[id]
	g := b.groups[epID]
	if !ok || g == nil {
		own := b.groups[sc.ep.id]
		own.hello, own.named = id, true
		b.byHello[id] = sc.ep.id
		return true
	}
	if len(g.members) >= maxGroupStreams {
		return false
	}
	b.leaveGroupLocked(sc)
	g.members = append(g.members, sc)
	sc.ep = g.ep
	b.log.Info("stream joined group", "endpoint", g.ep.String(), "streams", len(g.members))
	return true
}

// leaveGroupLocked removes sc from its group, dropping an emptied group.
func (b *StreamServerBind) leaveGroupLocked(sc *serverConn) {
	g := b.groups[sc.ep.id]
	if g == nil {
		return
	}
	g.members = slices.DeleteFunc(g.members, func(m *serverConn) bool { return m == sc })
	if len(g.members) == 0 {
		delete(b.groups, g.ep.id)
		if g.named {
			delete(b.byHello, g.hello)
		}
	}
}

// streamEndpointPrefix starts every stream endpoint's name, which is what
// a device's status reports as a peer's endpoint while it is on the stream.
const streamEndpointPrefix = "stream:"

// IsStreamEndpoint says whether a peer endpoint from Device.Status is an
// accepted stream (the peer is on the stream transport) rather than UDP.
func IsStreamEndpoint(endpoint string) bool {
	return strings.HasPrefix(endpoint, streamEndpointPrefix)
}

// serverEndpoint names one accepted stream.
type serverEndpoint struct {
	id   uint64
	name string
	ip   netip.Addr
}

func newServerEndpoint(id uint64, remote net.Addr) *serverEndpoint {
	ep := &serverEndpoint{id: id, name: fmt.Sprintf("%s%d/%s", streamEndpointPrefix, id, remote)}
	if ap, err := netip.ParseAddrPort(remote.String()); err == nil {
		ep.ip = ap.Addr()
	}
	return ep
}

func (e *serverEndpoint) String() string      { return e.name }
func (e *serverEndpoint) ClearSrc()           {}
func (e *serverEndpoint) SrcToString() string { return "" }
func (e *serverEndpoint) DstToString() string { return e.name }
func (e *serverEndpoint) DstToBytes() []byte  { return []byte(e.name) }
func (e *serverEndpoint) DstIP() netip.Addr   { return e.ip }
func (e *serverEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// Packet buffers in two pooled classes: a 1420-MTU datagram, and a jumbo
// one from the stream's large inner MTU (allocating and zeroing 32 KiB per
// packet was the server's largest allocation on a stream upload).
const smallPacket = 2048

var (
	packetPool = sync.Pool{New: func() any { b := make([]byte, smallPacket); return &b }}
	jumboPool  = sync.Pool{New: func() any { b := make([]byte, maxMessageSize); return &b }}
)

func getPacketBuf(n int) *[]byte {
	pool := &packetPool
	if n > smallPacket {
		pool = &jumboPool
	}
	b := pool.Get().(*[]byte)
	*b = (*b)[:n]
	return b
}

func putPacketBuf(b *[]byte) {
	switch cap(*b) {
	case smallPacket:
		*b = (*b)[:smallPacket]
		packetPool.Put(b)
	case maxMessageSize:
		*b = (*b)[:maxMessageSize]
		jumboPool.Put(b)
	}
}
