package tunnel

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
)

// Stream transport: WireGuard datagrams over one reliable byte stream (in
// production a Kubernetes port-forward to the gateway pod), each framed by
// WriteFrame. The WireGuard session lives above the stream, so a broken
// stream is redialled without a new handshake being needed.

const (
	streamBatchSize = conn.IdealBatchSize
	// writeTimeout bounds how long Send may block on a stalled stream
	// before the stream is declared broken and redialled.
	writeTimeout = 5 * time.Second
	// stableAfter is how long a stream must live for the dial backoff to
	// reset; shorter-lived streams keep backing off, so a gateway that
	// accepts and immediately drops is not hammered.
	stableAfter   = time.Second
	streamBufSize = 64 << 10
	// defaultUnansweredAfter is how long a handshake initiation sent on
	// the streams may go without a response or cookie reply before they
	// are dropped and dialled again: wireguard-go retries every 5 s, so
	// this is three tries. A live gateway that knows this workstation
	// answers within milliseconds; silence means the stream no longer
	// reaches it (a hung port-forward, an old pod).
	defaultUnansweredAfter = 15 * time.Second
)

// DialFunc opens a new stream to the other side.
type DialFunc func(ctx context.Context) (net.Conn, error)

// StreamBindConfig configures the client side of the stream transport.
type StreamBindConfig struct {
	Dial       DialFunc              // must return promptly once ctx is done
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
	MinBackoff time.Duration         // 0 = 100ms; first redial delay after a failure
	MaxBackoff time.Duration         // 0 = 5s; cap of the doubling backoff
	// OnReconnect runs (in its own goroutine) after each redial that
	// replaced a broken stream; nil = nothing. The far end learns the new
	// stream only from an authenticated packet, so the client should make
	// WireGuard send one (Device.Keepalive) rather than wait for traffic.
	OnReconnect func()
	// Streams is how many streams carry the tunnel at once (0 = the
	// BRIDGETUN_STREAMS environment variable, else DefaultStreams). Each is
	// its own port-forward, so its own connection through the API server,
	// kubelet and runtime: one such chain is slower than two in parallel.
	// Batches go round-robin over the live streams; WireGuard's replay
	// window absorbs the reordering, and the inner TCPs' reordering
	// detection the rest. More than one needs a gateway that groups them
	// (a hello frame names the group).
	Streams int
	// UnansweredAfter is how long a sent handshake initiation may stay
	// unanswered before the streams are redialled; 0 = 15 s.
	UnansweredAfter time.Duration
}

// DefaultStreams is how many port-forwards a stream tunnel uses unless
// told otherwise. bench-cluster measured 1, 2 and 4 (bench/results,
// issue #14.3): on one 2-core node that runs the whole cluster, more
// streams cost more CPU per GB on both sides (the inner TCPs retransmit
// what round-robin reorders) and moved less, so the default stays one and
// more is a knob for clusters whose API server chain, not CPU, is the limit.
const DefaultStreams = 1

// streamsFromEnv reads BRIDGETUN_STREAMS (a benchmark knob), else the default.
func streamsFromEnv() int {
	if n, err := strconv.Atoi(os.Getenv("BRIDGETUN_STREAMS")); err == nil && n >= 1 && n <= maxGroupStreams {
		return n
	}
	return DefaultStreams
}

// StreamBind is the client side of the stream transport: it keeps one
// stream dialled and carries every peer's datagrams over it.
type StreamBind struct {
	cfg StreamBindConfig
	log *slog.Logger
	m   *metrics

	group [groupIDSize]byte // names this bind's streams to the server; fixed for its life

	mu    sync.Mutex
	slots []*clientSession // one per stream; nil while closed
	next  atomic.Uint32    // round-robin position for Send
	// unansweredSince is when the oldest handshake initiation still without
	// a response went out on a stream (UnixNano; 0 = none). The response
	// may come back on any of a group's streams, so it is the bind's.
	unansweredSince atomic.Int64
}

var (
	_ conn.Bind        = (*StreamBind)(nil)
	_ endpointRewriter = (*StreamBind)(nil)
	_ conn.Endpoint    = clientEndpoint{}
)

// NewStreamBind returns a closed client bind; wireguard-go opens it.
func NewStreamBind(cfg StreamBindConfig) *StreamBind {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	if cfg.UnansweredAfter <= 0 {
		cfg.UnansweredAfter = defaultUnansweredAfter
	}
	if cfg.Streams <= 0 {
		cfg.Streams = streamsFromEnv()
	}
	cfg.Streams = min(cfg.Streams, maxGroupStreams)
	b := &StreamBind{
		cfg: cfg,
		log: obs.Component(discardLogger(cfg.Log), "stream_bind"),
		m:   mustMetrics(cfg.Registerer),
	}
	_, _ = crand.Read(b.group[:])
	return b
}

// clientSession is one stream slot for one Open..Close period. wireguard-go
// closes and reopens binds on updates, so everything a period started
// hangs off its sessions.
type clientSession struct {
	b      *StreamBind
	slot   int
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the dial loop has exited

	mu      sync.Mutex
	cur     *streamConn   // nil or dead while reconnecting
	changed chan struct{} // closed and replaced when cur is set
	// pendingInit is the latest handshake initiation sent while the stream
	// was down, sent first on the next stream. Without it the first
	// handshake after Open waits for wireguard-go's 5s retransmit.
	pendingInit []byte
}

// Open starts dialling in the background and returns immediately; packets
// sent before the stream is up are dropped, as UDP would lose them. The
// port is meaningless for a stream and returned unchanged.
func (b *StreamBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.slots != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	fns := make([]conn.ReceiveFunc, b.cfg.Streams)
	for i := range b.cfg.Streams {
		ctx, cancel := context.WithCancel(context.Background())
		s := &clientSession{b: b, slot: i, ctx: ctx, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{})}
		b.slots = append(b.slots, s)
		fns[i] = s.receive
		go s.dialLoop()
	}
	return fns, port, nil
}

// Close closes the stream, stops the dial loop and waits for it, and makes
// this period's ReceiveFunc return net.ErrClosed. The bind can be reopened.
func (b *StreamBind) Close() error {
	b.mu.Lock()
	slots := b.slots
	b.slots = nil
	b.mu.Unlock()
	for _, s := range slots {
		s.cancel()
		if sc := s.current(); sc != nil {
			sc.fail(net.ErrClosed)
		}
	}
	for _, s := range slots {
		<-s.done
	}
	return nil
}

// Redial drops every live stream so that each slot dials again at once. The
// session calls it when the gateway pod changed under a stream that still
// reaches the old one: a stream to a dying pod may stay open for a while
// (or hang without an end), and nothing would otherwise move it.
func (b *StreamBind) Redial(reason string) {
	b.mu.Lock()
	slots := b.slots
	b.mu.Unlock()
	for _, s := range slots {
		if sc := s.current(); sc != nil {
			b.log.Info("dropping the stream to dial again", "remote", sc.c.RemoteAddr().String(), "reason", reason)
			sc.fail(errors.New(reason))
		}
	}
}

// SetMark is a no-op: the stream's own socket is the dialler's business.
func (b *StreamBind) SetMark(uint32) error { return nil }

// BatchSize lets wireguard-go hand over up to 128 packets per Send, which
// become one write on the stream.
func (b *StreamBind) BatchSize() int { return streamBatchSize }

// ParseEndpoint accepts any string: there is only one place to send to.
func (b *StreamBind) ParseEndpoint(string) (conn.Endpoint, error) { return clientEndpoint{}, nil }

// peerEndpoint gives every peer the stream as its endpoint, whatever was
// configured, so the client can initiate handshakes.
func (b *StreamBind) peerEndpoint(string) string { return clientEndpoint{}.DstToString() }

// Send writes bufs as frames in one write. While the stream is down the
// packets are dropped (and counted) and Send returns nil: WireGuard
// retransmits handshakes itself and the inner protocols recover data, so
// queueing would only add latency and memory. The one exception is the
// latest handshake initiation, kept and sent when the stream comes up.
func (b *StreamBind) Send(bufs [][]byte, _ conn.Endpoint) error {
	b.mu.Lock()
	slots := b.slots
	b.mu.Unlock()
	if slots == nil {
		return net.ErrClosed
	}
	s, sc := b.pick(slots)
	if sc == nil {
		slots[0].keepInitiation(bufs)
		b.m.dropped.WithLabelValues(dropStreamDown).Add(float64(len(bufs)))
		return nil
	}
	if hasMessage(bufs, msgInitiation, msgInitiationSize) {
		// Marked before the write: the answer may be read before it returns.
		b.unansweredSince.CompareAndSwap(0, time.Now().UnixNano())
	}
	if err := sc.writeBatch(bufs); err != nil {
		b.m.dropped.WithLabelValues(dropStreamDown).Add(float64(len(bufs)))
		if s.ctx.Err() == nil {
			b.log.Warn("stream write failed, reconnecting", "remote", sc.c.RemoteAddr().String(), "err", err)
		}
		sc.fail(err)
	}
	return nil
}

// hasMessage reports whether bufs hold a handshake message of type typ and
// its fixed size (the size alone rules out almost every data packet).
func hasMessage(bufs [][]byte, typ byte, size int) bool {
	for _, p := range bufs {
		if len(p) == size && p[0] == typ {
			return true
		}
	}
	return false
}

// handshakeUnanswered reports, once per silence, whether an initiation has
// gone unanswered for UnansweredAfter; it clears the mark it reports.
func (b *StreamBind) handshakeUnanswered(now time.Time) bool {
	since := b.unansweredSince.Load()
	return since != 0 && now.Sub(time.Unix(0, since)) >= b.cfg.UnansweredAfter &&
		b.unansweredSince.CompareAndSwap(since, 0)
}

// pick returns the next live stream round-robin (and its slot), or the
// first slot and nil while none is up.
func (b *StreamBind) pick(slots []*clientSession) (*clientSession, *streamConn) {
	if len(slots) == 1 {
		return slots[0], slots[0].current()
	}
	start := int(b.next.Add(1))
	for i := range slots {
		s := slots[(start+i)%len(slots)]
		if sc := s.current(); sc != nil {
			return s, sc
		}
	}
	return slots[0], nil
}

// keepInitiation remembers the last handshake initiation in bufs: one
// fixed-size message, so holding it is bounded.
func (s *clientSession) keepInitiation(bufs [][]byte) {
	for _, p := range bufs {
		if len(p) == msgInitiationSize && validMessage(p) && p[0] == msgInitiation {
			s.mu.Lock()
			s.pendingInit = append(s.pendingInit[:0], p...)
			s.mu.Unlock()
		}
	}
}

// takeInitiation returns and clears the remembered initiation.
func (s *clientSession) takeInitiation() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pendingInit
	s.pendingInit = nil
	return p
}

// current returns the live stream, or nil while reconnecting.
func (s *clientSession) current() *streamConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.cur.isDead() {
		return nil
	}
	return s.cur
}

func (s *clientSession) setConn(sc *streamConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = sc
	close(s.changed)
	s.changed = make(chan struct{})
}

// waitConn blocks until a live stream exists or the session is closed.
func (s *clientSession) waitConn() (*streamConn, error) {
	for {
		s.mu.Lock()
		sc, changed := s.cur, s.changed
		s.mu.Unlock()
		if s.ctx.Err() != nil {
			return nil, net.ErrClosed
		}
		if sc != nil && !sc.isDead() {
			return sc, nil
		}
		select {
		case <-changed:
		case <-s.ctx.Done():
			return nil, net.ErrClosed
		}
	}
}

// receive is the session's ReceiveFunc. It reads straight into
// wireguard-go's buffers: one blocking frame, then every further frame
// already buffered, so a burst costs one call.
func (s *clientSession) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	for {
		sc, err := s.waitConn()
		if err != nil {
			return 0, err
		}
		n, err := sc.readBatch(bufs, sizes)
		if n > 0 {
			for i := range n {
				eps[i] = clientEndpoint{}
				if p := bufs[i][:sizes[i]]; len(p) == msgResponseSize && p[0] == msgResponse ||
					len(p) == msgCookieReplySize && p[0] == msgCookieReply {
					s.b.unansweredSince.Store(0) // the gateway is there and answers
				}
			}
			return n, nil
		}
		if errors.Is(err, ErrFrameTooLarge) {
			s.b.m.dropped.WithLabelValues(dropOversized).Inc()
		}
		if s.ctx.Err() == nil {
			s.b.log.Warn("stream read failed, reconnecting", "remote", sc.c.RemoteAddr().String(), "err", err)
		}
		sc.fail(err)
	}
}

// dialLoop keeps one stream up until the session closes.
func (s *clientSession) dialLoop() {
	defer close(s.done)
	min, max := s.b.cfg.MinBackoff, s.b.cfg.MaxBackoff
	backoff := min
	first := true
	for {
		c, err := s.b.cfg.Dial(s.ctx)
		if s.ctx.Err() != nil {
			if err == nil {
				c.Close()
			}
			return
		}
		if err != nil {
			s.b.log.Warn("stream dial failed", "err", err, "retry_in", backoff)
			if !s.sleep(backoff) {
				return
			}
			backoff = nextBackoff(backoff, max)
			continue
		}
		if nd, ok := c.(interface{ SetNoDelay(bool) error }); ok {
			// Each frame is a whole datagram already batched by
			// wireguard-go; Nagle would only add latency.
			nd.SetNoDelay(true)
		}
		redial := !first
		if redial {
			s.b.m.reconnects.Inc()
		}
		first = false
		sc := newStreamConn(c)
		start := time.Now()
		s.b.log.Info("stream connected", "remote", c.RemoteAddr().String(), "slot", s.slot)
		var opening [][]byte
		if s.b.cfg.Streams > 1 {
			opening = append(opening, helloFrame(s.b.group)) // before any datagram: the server groups by it
		}
		if p := s.takeInitiation(); p != nil {
			opening = append(opening, p)
			s.b.unansweredSince.CompareAndSwap(0, time.Now().UnixNano())
		}
		if len(opening) > 0 {
			if err := sc.writeBatch(opening); err != nil {
				sc.fail(err) // handled below like any broken stream
			}
		}
		s.setConn(sc)
		if redial && s.b.cfg.OnReconnect != nil {
			go s.b.cfg.OnReconnect()
		}
		if !s.watch(sc) {
			return
		}
		if time.Since(start) >= stableAfter {
			backoff = min
			continue
		}
		if !s.sleep(backoff) {
			return
		}
		backoff = nextBackoff(backoff, max)
	}
}

func nextBackoff(cur, max time.Duration) time.Duration { return min(2*cur, max) }

// watch waits for sc to die, dropping it (and the group's other streams)
// when a handshake initiation goes unanswered; it reports false when the
// session closed instead.
func (s *clientSession) watch(sc *streamConn) bool {
	tick := time.NewTicker(max(s.b.cfg.UnansweredAfter/5, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-sc.dead:
			return true
		case <-s.ctx.Done():
			sc.fail(net.ErrClosed)
			return false
		case now := <-tick.C:
			if s.b.handshakeUnanswered(now) {
				s.b.Redial(fmt.Sprintf("no answer to the handshake for %s", s.b.cfg.UnansweredAfter))
			}
		}
	}
}

// sleep waits d or until the session closes, reporting whether to go on.
func (s *clientSession) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// streamConn is one stream with buffered, serialised I/O. A failure on
// either direction kills it for both.
type streamConn struct {
	c   net.Conn
	r   *bufio.Reader // only the single reader goroutine touches it
	wmu sync.Mutex
	w   *bufio.Writer

	dead chan struct{}
	once sync.Once
}

func newStreamConn(c net.Conn) *streamConn {
	return &streamConn{
		c:    c,
		r:    bufio.NewReaderSize(c, streamBufSize),
		w:    bufio.NewWriterSize(c, streamBufSize),
		dead: make(chan struct{}),
	}
}

// fail closes the stream once; readers and writers then error out.
func (sc *streamConn) fail(error) {
	sc.once.Do(func() {
		close(sc.dead)
		sc.c.Close()
	})
}

func (sc *streamConn) isDead() bool {
	select {
	case <-sc.dead:
		return true
	default:
		return false
	}
}

// writeBatch writes bufs as frames and flushes once, coalescing the batch
// into as few writes as the buffer allows.
func (sc *streamConn) writeBatch(bufs [][]byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if err := sc.c.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	for _, p := range bufs {
		if err := WriteFrame(sc.w, p); err != nil {
			return err
		}
	}
	return sc.w.Flush()
}

// readBatch reads one frame, blocking, then any frames already buffered.
func (sc *streamConn) readBatch(bufs [][]byte, sizes []int) (int, error) {
	k, err := ReadFrame(sc.r, bufs[0])
	if err != nil {
		return 0, err
	}
	sizes[0] = k
	n := 1
	for n < len(bufs) {
		l, ok := bufferedFrameLen(sc.r)
		if !ok || l > len(bufs[n]) {
			break // an oversized frame errors on the next call
		}
		if k, err = ReadFrame(sc.r, bufs[n]); err != nil {
			break
		}
		sizes[n] = k
		n++
	}
	return n, nil
}

// clientEndpoint is the stream client's one endpoint.
type clientEndpoint struct{}

func (clientEndpoint) ClearSrc()           {}
func (clientEndpoint) SrcToString() string { return "" }
func (clientEndpoint) DstToString() string { return "stream" }
func (clientEndpoint) DstToBytes() []byte  { return []byte("stream") }
func (clientEndpoint) DstIP() netip.Addr   { return netip.Addr{} }
func (clientEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }
