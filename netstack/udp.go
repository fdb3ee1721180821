package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// maxUDPPacket is the largest datagram the relay copies.
const maxUDPPacket = 64 << 10

// handleUDP is called by gVisor, inline, for the first datagram of a
// (src, dst) pair that has no endpoint yet. It creates the gVisor endpoint
// for the pair at once (so that datagram and the ones after it queue there)
// and relays in a goroutine.
func (g *Gateway) handleUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	src := netip.AddrPortFrom(netipAddr(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(netipAddr(id.LocalAddress), id.LocalPort)
	log := g.log.With("proto", "udp", "src", src, "dst", dst)
	target, reason, allowed := g.target(src, dst, "udp")
	if !allowed {
		log.Debug("destination refused", "reason", reason)
		// No endpoint is made, so every datagram of the pair comes here
		// and gets its own answer.
		if err := g.ep.injectOutbound(udpProhibited(src, dst)); err != nil {
			log.Debug("answer refused datagram", "err", err)
		}
		return
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		log.Debug("create endpoint failed", "err", tErr.String())
		return
	}
	in := gonet.NewUDPConn(&wq, ep)
	if !g.enter() {
		in.Close()
		return
	}
	go func() {
		defer g.wg.Done()
		if !g.track(in) {
			return
		}
		defer g.untrack(in)
		ctx, cancel := context.WithTimeout(g.ctx, dialTimeout)
		out, err := g.cfg.Dial(ctx, "udp", target.String())
		cancel()
		if err != nil {
			g.m.dialErrors.WithLabelValues("udp").Inc()
			log.Debug("dial failed", "err", err)
			return
		}
		if !g.track(out) {
			return
		}
		defer g.untrack(out)
		g.m.flowsTotal.WithLabelValues("udp").Inc()
		active := g.m.flowsActive.WithLabelValues("udp")
		active.Inc()
		defer active.Dec()
		log.Debug("flow open")
		relayUDP(in, out, g.cfg.UDPIdleTimeout)
		log.Debug("flow closed")
	}()
}

// relayUDP copies datagrams both ways until neither direction has carried a
// datagram for idle, or either side fails.
func relayUDP(a, b net.Conn, idle time.Duration) {
	var last atomic.Int64 // unix nanos of the last datagram either way
	last.Store(time.Now().UnixNano())
	done := make(chan struct{}, 2)
	half := func(dst, src net.Conn) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, maxUDPPacket)
		for {
			// Wake up at the earliest moment the flow could be idle.
			src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
			n, err := src.Read(buf)
			if err != nil {
				if isTimeout(err) && time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction was active meanwhile
				}
				return
			}
			last.Store(time.Now().UnixNano())
			if _, err := dst.Write(buf[:n]); err != nil && !isTransient(err) {
				return
			}
		}
	}
	go half(a, b)
	go half(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// isTransient reports send errors that lose one datagram but not the flow,
// such as ECONNREFUSED from an earlier datagram's ICMP port unreachable.
func isTransient(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && !errors.Is(err, net.ErrClosed)
}
