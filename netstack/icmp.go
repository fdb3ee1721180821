package netstack

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const (
	// echoTimeout is how long the gateway waits for the real host before
	// giving up; the peer then sees no reply, as it would from a dead host.
	echoTimeout = 2 * time.Second
	// echoMaxInFlight bounds concurrent host pings; more are dropped.
	echoMaxInFlight = 64
)

// pingFunc sends one echo request to dst from the host and returns nil if an
// echo reply came back before ctx ended.
type pingFunc func(ctx context.Context, dst netip.Addr, data []byte) error

// echoRelay answers a peer's pings for remote hosts: gVisor in promiscuous
// mode would answer every echo request itself, so requests for anything but
// the gateway's own addresses are taken out of the inbound path, re-sent
// from the host, and answered only if the real host answers.
type echoRelay struct {
	g   *Gateway
	sem chan struct{}
}

// echoRequest is the part of an ICMP echo request the relay needs.
type echoRequest struct {
	src, dst netip.Addr
	data     []byte // echo payload after ident and sequence
}

// intercept is the link endpoint's inbound hook: true means the packet was
// an echo request for a remote host and is now handled here.
func (r *echoRelay) intercept(pkt []byte) bool {
	req, ok := parseEchoRequest(pkt)
	if !ok || r.g.own[req.dst] {
		return false // not an echo request, or for us: gVisor answers
	}
	if _, ok := r.g.allowed(netip.AddrPortFrom(req.src, 0), netip.AddrPortFrom(req.dst, 0), "icmp"); !ok {
		r.g.m.icmpEcho.WithLabelValues("denied").Inc()
		if msg, err := prohibited(pkt); err == nil {
			_ = r.g.ep.injectOutbound(msg)
		}
		return true
	}
	select {
	case r.sem <- struct{}{}:
	default:
		r.g.m.icmpEcho.WithLabelValues("dropped").Inc()
		return true
	}
	if !r.g.enter() {
		<-r.sem
		return true
	}
	pkt = append([]byte(nil), pkt...) // the caller reuses its buffer
	req.data = append([]byte(nil), req.data...)
	go func() {
		defer r.g.wg.Done()
		defer func() { <-r.sem }()
		r.relay(pkt, req)
	}()
	return true
}

func (r *echoRelay) relay(pkt []byte, req echoRequest) {
	log := r.g.log.With("proto", "icmp", "src", req.src, "dst", req.dst)
	ctx, cancel := context.WithTimeout(r.g.ctx, echoTimeout)
	defer cancel()
	if err := r.g.cfg.pingHost(ctx, req.dst, req.data); err != nil {
		result := "error"
		if ctx.Err() != nil {
			result = "timeout"
		}
		r.g.m.icmpEcho.WithLabelValues(result).Inc()
		log.Debug("host ping failed", "err", err)
		return
	}
	reply, err := buildEchoReply(pkt)
	if err == nil {
		err = r.g.ep.injectOutbound(reply)
	}
	if err != nil {
		r.g.m.icmpEcho.WithLabelValues("error").Inc()
		log.Debug("echo reply failed", "err", err)
		return
	}
	r.g.m.icmpEcho.WithLabelValues("replied").Inc()
}

// parseEchoRequest recognises an unfragmented ICMPv4/ICMPv6 echo request.
func parseEchoRequest(pkt []byte) (echoRequest, bool) {
	var req echoRequest
	switch pkt[0] >> 4 {
	case 4:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber ||
			ip.More() || ip.FragmentOffset() != 0 {
			return req, false
		}
		ic := header.ICMPv4(pkt[ip.HeaderLength():ip.TotalLength()])
		if len(ic) < header.ICMPv4MinimumSize || ic.Type() != header.ICMPv4Echo || ic.Code() != 0 {
			return req, false
		}
		req.src, req.dst = netipAddr(ip.SourceAddress()), netipAddr(ip.DestinationAddress())
		req.data = ic[header.ICMPv4MinimumSize:]
		return req, true
	case 6:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.ICMPv6ProtocolNumber {
			return req, false
		}
		ic := header.ICMPv6(pkt[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())])
		if len(ic) < header.ICMPv6EchoMinimumSize || ic.Type() != header.ICMPv6EchoRequest || ic.Code() != 0 {
			return req, false
		}
		req.src, req.dst = netipAddr(ip.SourceAddress()), netipAddr(ip.DestinationAddress())
		req.data = ic[header.ICMPv6EchoMinimumSize:]
		return req, true
	}
	return req, false
}

// buildEchoReply returns the echo reply a host would send for the echo
// request req: addresses swapped, same identifier, sequence and payload.
func buildEchoReply(req []byte) ([]byte, error) {
	if len(req) == 0 {
		return nil, errors.New("build echo reply: empty packet")
	}
	switch req[0] >> 4 {
	case 4:
		ip := header.IPv4(req)
		if !ip.IsValid(len(req)) {
			return nil, fmt.Errorf("build echo reply: invalid IPv4 packet of %d bytes", len(req))
		}
		body := req[ip.HeaderLength():ip.TotalLength()]
		out, icmp := icmpv4Back(ip, len(body))
		ic := header.ICMPv4(icmp)
		copy(ic, body)
		ic.SetType(header.ICMPv4EchoReply)
		ic.SetCode(0)
		ic.SetChecksum(0)
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		return out, nil
	case 6:
		ip := header.IPv6(req)
		if !ip.IsValid(len(req)) {
			return nil, fmt.Errorf("build echo reply: invalid IPv6 packet of %d bytes", len(req))
		}
		body := req[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
		out, icmp := icmpv6Back(ip, len(body))
		ic := header.ICMPv6(icmp)
		src, dst := ip.DestinationAddress(), ip.SourceAddress()
		copy(ic, body)
		ic.SetType(header.ICMPv6EchoReply)
		ic.SetCode(0)
		ic.SetChecksum(0)
		ic.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: src, Dst: dst}))
		return out, nil
	}
	return nil, fmt.Errorf("build echo reply: IP version %d", req[0]>>4)
}

// icmpv4Back allocates an IPv4 packet carrying icmpLen bytes of ICMP from
// ip's destination back to its source, its IP header filled in; it
// returns the packet and its ICMP part, for the caller to fill.
func icmpv4Back(ip header.IPv4, icmpLen int) (packet, icmp []byte) {
	packet = make([]byte, header.IPv4MinimumSize+icmpLen)
	oip := header.IPv4(packet)
	oip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(packet)),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     ip.DestinationAddress(),
		DstAddr:     ip.SourceAddress(),
	})
	oip.SetChecksum(^oip.CalculateChecksum())
	return packet, packet[header.IPv4MinimumSize:]
}

// icmpv6Back is icmpv4Back for IPv6 (the ICMPv6 checksum covers the
// addresses: the caller computes it from ip's swapped pair).
func icmpv6Back(ip header.IPv6, icmpLen int) (packet, icmp []byte) {
	packet = make([]byte, header.IPv6MinimumSize+icmpLen)
	header.IPv6(packet).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(icmpLen),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           ip.DestinationAddress(),
		DstAddr:           ip.SourceAddress(),
	})
	return packet, packet[header.IPv6MinimumSize:]
}

// hostPing pings dst from the host: first with an unprivileged ICMP datagram
// socket (allowed by net.ipv4.ping_group_range), then with a raw socket,
// which needs root or CAP_NET_RAW.
func hostPing(ctx context.Context, dst netip.Addr, data []byte) error {
	dst = dst.Unmap()
	dgram, raw := "udp4", "ip4:icmp"
	if dst.Is6() {
		dgram, raw = "udp6", "ip6:ipv6-icmp"
	}
	err := pingOnce(ctx, dgram, dst, data)
	if err == nil || !isPermission(err) {
		return err
	}
	if rawErr := pingOnce(ctx, raw, dst, data); rawErr != nil {
		return errors.Join(err, rawErr)
	}
	return nil
}

// errListen marks failures to open the ping socket.
type errListen struct{ err error }

func (e errListen) Error() string { return e.err.Error() }
func (e errListen) Unwrap() error { return e.err }

func isPermission(err error) bool {
	var le errListen
	return errors.As(err, &le)
}

func pingOnce(ctx context.Context, network string, dst netip.Addr, data []byte) error {
	listen := "0.0.0.0"
	var typ, replyTyp icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	proto := 1
	if dst.Is6() {
		listen, typ, replyTyp, proto = "::", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	c, err := icmp.ListenPacket(network, listen)
	if err != nil {
		return errListen{fmt.Errorf("ping %s: listen %s: %w", dst, network, err)}
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	dgram := network[:3] == "udp"
	id, seq := rand.N(1<<16), rand.N(1<<16) // datagram sockets replace id with their port
	msg, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: data}}).Marshal(nil)
	if err != nil {
		return fmt.Errorf("ping %s: marshal: %w", dst, err)
	}
	var to net.Addr = &net.IPAddr{IP: dst.AsSlice()}
	if dgram {
		to = &net.UDPAddr{IP: dst.AsSlice()}
	}
	if _, err := c.WriteTo(msg, to); err != nil {
		return fmt.Errorf("ping %s: send: %w", dst, err)
	}
	buf := make([]byte, 1500+len(data))
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("ping %s: %w", dst, ctx.Err())
			}
			return fmt.Errorf("ping %s: receive: %w", dst, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyTyp {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.Seq != seq || (!dgram && e.ID != id) || !sameIP(from, dst) {
			continue
		}
		return nil
	}
}

func sameIP(a net.Addr, want netip.Addr) bool {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	}
	got, ok := netip.AddrFromSlice(ip)
	return ok && got.Unmap() == want
}
