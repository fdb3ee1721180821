package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of a UDP forward.
const (
	// UDPFlowIdle is how long a flow lives without a datagram either way.
	UDPFlowIdle = 60 * time.Second
	// UDPMaxFlows bounds the flows of one forward; a new client beyond it
	// takes the place of the flow idle longest.
	UDPMaxFlows = 512
)

// ForwardUDP listens for UDP on local (a loopback address normally) and
// relays datagrams through the netstack tunnel to remote (an IP:port), until
// ctx ends. Each local client address gets its own flow (its own socket in
// the tunnel), so replies go back to the client that asked; a flow ends
// after UDPFlowIdle without traffic. It returns the bound address.
func (c *Client) ForwardUDP(ctx context.Context, local, remote string, log *slog.Logger) (net.Addr, error) {
	l, err := c.ListenForward(ctx, "udp", local, remote, log)
	if err != nil {
		return nil, err
	}
	return l.Addr(), nil
}

func (c *Client) listenUDP(ctx context.Context, local, remote string, log *slog.Logger) (*ForwardListener, error) {
	if _, err := netip.ParseAddrPort(remote); err != nil {
		return nil, fmt.Errorf("forward udp %s: remote %q: want IP:port", local, remote)
	}
	dial := func(ctx context.Context) (net.Conn, error) { return c.stack.DialContext(ctx, "udp", remote) }
	r, err := newUDPRelay(local, udpRelayConfig{Dial: dial, Log: log.With("remote", remote)})
	if err != nil {
		return nil, err
	}
	return r.start(ctx), nil
}

// udpRelayConfig configures one UDP relay.
type udpRelayConfig struct {
	Dial    func(context.Context) (net.Conn, error) // opens a flow's socket towards the remote
	Idle    time.Duration                           // 0 = UDPFlowIdle
	MaxFlow int                                     // 0 = UDPMaxFlows
	Log     *slog.Logger                            // nil discards
}

// udpRelay maps local client addresses to flows: one connected socket
// towards the remote each.
type udpRelay struct {
	cfg udpRelayConfig
	pc  *net.UDPConn
	wg  sync.WaitGroup // flow pumps

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow
}

type udpFlow struct {
	client netip.AddrPort
	conn   net.Conn
	last   atomic.Int64 // UnixNano of the last datagram either way
	closed atomic.Bool  // closed by the relay (evicted, or the relay ends)
}

// newUDPRelay binds local; start relays.
func newUDPRelay(local string, cfg udpRelayConfig) (*udpRelay, error) {
	if cfg.Idle == 0 {
		cfg.Idle = UDPFlowIdle
	}
	if cfg.MaxFlow == 0 {
		cfg.MaxFlow = UDPMaxFlows
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	laddr, err := net.ResolveUDPAddr("udp", local)
	if err != nil {
		return nil, fmt.Errorf("forward udp %s: %w", local, err)
	}
	pc, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("forward udp %s: %w", local, err)
	}
	return &udpRelay{cfg: cfg, pc: pc, flows: map[netip.AddrPort]*udpFlow{}}, nil
}

// start relays until ctx ends or the returned listener is closed.
func (r *udpRelay) start(ctx context.Context) *ForwardListener {
	ctx, cancel := context.WithCancel(ctx)
	l := &ForwardListener{addr: r.pc.LocalAddr(), cancel: cancel, done: make(chan struct{})}
	running := make(chan struct{})
	go l.closeWhenDone(ctx, r.pc, running)
	go func() {
		defer close(running)
		r.run(ctx)
	}()
	return l
}

// run reads from local clients until the socket closes (or fails), then
// ends every flow and waits for their pumps.
func (r *udpRelay) run(ctx context.Context) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.cfg.Log.Warn("udp forward: read failed; closing", "local", r.pc.LocalAddr(), "err", err)
			}
			break
		}
		r.send(ctx, from, buf[:n])
	}
	r.mu.Lock()
	for _, f := range r.flows {
		f.close()
	}
	clear(r.flows)
	r.mu.Unlock()
	r.wg.Wait()
}

// send passes one datagram from client on through its flow. A flow that
// ended between lookup and write (idle, evicted) is replaced once.
func (r *udpRelay) send(ctx context.Context, client netip.AddrPort, b []byte) {
	for range 2 {
		f := r.flow(ctx, client)
		if f == nil {
			return
		}
		f.touch()
		_, err := f.conn.Write(b)
		if err == nil {
			return
		}
		if !f.closed.Load() {
			r.cfg.Log.Debug("udp forward: send failed", "client", client, "err", err)
			return
		}
	}
}

// flow returns the client's flow, opening one (and evicting the flow idle
// longest when at the bound); nil when the remote cannot be dialled.
func (r *udpRelay) flow(ctx context.Context, client netip.AddrPort) *udpFlow {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f := r.flows[client]; f != nil {
		return f
	}
	if len(r.flows) >= r.cfg.MaxFlow {
		var oldest *udpFlow
		for _, f := range r.flows {
			if oldest == nil || f.last.Load() < oldest.last.Load() {
				oldest = f
			}
		}
		r.cfg.Log.Debug("udp forward: at the flow bound; evicting the idlest", "max", r.cfg.MaxFlow, "evicted", oldest.client)
		delete(r.flows, oldest.client)
		oldest.close()
	}
	conn, err := r.cfg.Dial(ctx)
	if err != nil {
		r.cfg.Log.Warn("udp forward: dial failed", "client", client, "err", err)
		return nil
	}
	f := &udpFlow{client: client, conn: conn}
	f.touch()
	r.flows[client] = f
	r.wg.Add(1)
	go r.pump(f)
	r.cfg.Log.Debug("udp forward: flow opened", "client", client, "flows", len(r.flows))
	return f
}

// pump sends the remote's replies to the flow's client until the flow is
// idle for cfg.Idle, fails, or is closed.
func (r *udpRelay) pump(f *udpFlow) {
	defer r.wg.Done()
	defer r.remove(f)
	buf := make([]byte, 64<<10)
	for {
		idleAt := time.Unix(0, f.last.Load()).Add(r.cfg.Idle)
		_ = f.conn.SetReadDeadline(idleAt)
		n, err := f.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !f.closed.Load() {
				if time.Since(time.Unix(0, f.last.Load())) < r.cfg.Idle {
					continue // the client sent meanwhile
				}
				r.cfg.Log.Debug("udp forward: flow idle; closed", "client", f.client)
				return
			}
			if !f.closed.Load() {
				// A refused port, say: the client's next datagram opens a new flow.
				r.cfg.Log.Debug("udp forward: flow failed", "client", f.client, "err", err)
			}
			return
		}
		f.touch()
		if _, err := r.pc.WriteToUDPAddrPort(buf[:n], f.client); err != nil {
			r.cfg.Log.Debug("udp forward: reply to client failed", "client", f.client, "err", err)
		}
	}
}

// remove forgets f (unless a newer flow took its client's place) and closes it.
func (r *udpRelay) remove(f *udpFlow) {
	r.mu.Lock()
	if r.flows[f.client] == f {
		delete(r.flows, f.client)
	}
	r.mu.Unlock()
	f.close()
}

// flowCount reports the open flows.
func (r *udpRelay) flowCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.flows)
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (f *udpFlow) close() {
	if f.closed.CompareAndSwap(false, true) {
		_ = f.conn.Close()
	}
}
