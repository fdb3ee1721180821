package netstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// maxBuffer is the top of the TCP receive- and send-buffer ranges. The
// initial sizes stay gVisor's defaults (1 MiB) and receive-buffer moderation
// and send-buffer auto-tuning grow them; only the ceiling is raised, for
// high-RTT paths (PERF-NOTES: a fixed 8 MiB buffer made the download direction
// worse at low RTT).
const maxBuffer = 8 << 20

// gatewayBuffer is the TCP receive and send buffer of a gateway flow that
// may not grow (GatewayConfig.GrowBuffers): gVisor's default initial size,
// fixed. wireguard-go's queues never drop, so nothing tells a flow's
// congestion control that the gateway is behind: windows that grow
// (moderation, send auto-tuning up to maxBuffer) fill those queues
// instead, and the first flows to grow starve the rest. bench-scale, one
// run each: 50 bulk uploads' per-workstation Jain 0.22-0.38 with growth,
// 0.73-0.91 fixed at 1 MiB (caps of 2 and 4 MiB: 0.40, 0.39), one peer's 2
// downloads peak 107-117 MiB instead of 135-173 (before compact
// wireguard-go buffers), aggregate not lower. The cost: one flow moves at
// most 1 MiB per round trip (170 Mbit/s at 50 ms), which the stream
// transport's deep round trip through the API server pays (see
// GrowBuffers).
var gatewayBuffer int64 = 1 << 20 // a variable so tests can tell it from gVisor's default

// stackOptions says how newStack sets up the NIC.
type stackOptions struct {
	// promiscuous accepts packets for any destination and lets the stack send
	// from any source: the gateway terminates flows addressed to anywhere.
	promiscuous bool
	// acceptLoopback lets packets addressed to loopback reach the transport
	// layer instead of being dropped as martians, so the gateway's deny list
	// can refuse them with an RST (prompt for the peer, and counted).
	acceptLoopback bool
}

// newStack builds a gVisor stack with one NIC on ep, the given local
// addresses, default routes for both families, SACK on and raised
// receive- and send-buffer ceilings.
func newStack(ep *linkEndpoint, addrs []netip.Addr, opts stackOptions) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: opts.acceptLoopback}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: opts.acceptLoopback}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		// HandleLocal stays false: with promiscuous mode on it makes gVisor
		// drop every packet as InvalidSourceAddressesReceived (PERF-NOTES).
	})
	fail := func(err error) (*stack.Stack, error) {
		s.Close()
		s.Wait()
		return nil, err
	}
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fail(fmt.Errorf("enable tcp sack: %s", err))
	}
	// A short TIME_WAIT: the stack terminates flows for peers whose kernels
	// reuse a source port soon after a close; a gVisor endpoint still in a
	// 60 s TIME_WAIT for that 4-tuple swallows the new SYN, and the peer's
	// connect hangs. The tunnel's own transport detects stray duplicates.
	tw := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fail(fmt.Errorf("set tcp time-wait timeout: %s", err))
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fail(fmt.Errorf("enable tcp receive buffer moderation: %s", err))
	}
	var rcv tcpip.TCPReceiveBufferSizeRangeOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fail(fmt.Errorf("read tcp receive buffer range: %s", err))
	}
	var snd tcpip.TCPSendBufferSizeRangeOption
	if err := s.TransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fail(fmt.Errorf("read tcp send buffer range: %s", err))
	}
	rcv.Max = max(rcv.Max, maxBuffer)
	snd.Max = max(snd.Max, maxBuffer)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fail(fmt.Errorf("set tcp receive buffer range %+v: %s", rcv, err))
	}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fail(fmt.Errorf("set tcp send buffer range %+v: %s", snd, err))
	}
	if err := s.CreateNIC(nicID, ep); err != nil {
		return fail(fmt.Errorf("create nic: %s", err))
	}
	if opts.promiscuous {
		if err := s.SetPromiscuousMode(nicID, true); err != nil {
			return fail(fmt.Errorf("set promiscuous mode: %s", err))
		}
		if err := s.SetSpoofing(nicID, true); err != nil {
			return fail(fmt.Errorf("set spoofing: %s", err))
		}
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{
			Protocol:          protoOf(a),
			AddressWithPrefix: tcpip.AddrFromSlice(a.Unmap().AsSlice()).WithPrefix(),
		}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fail(fmt.Errorf("add address %s: %s", a, err))
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return s, nil
}

// protoOf returns gVisor's network protocol number for a.
func protoOf(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// fullAddr converts ap for gVisor.
func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice()), Port: ap.Port()}
}

// netipAddr converts a gVisor address.
func netipAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// dialStack dials through s as a local application would. network is
// "tcp", "tcp4", "tcp6", "udp", "udp4" or "udp6"; the host must be an IP literal.
func dialStack(ctx context.Context, s *stack.Stack, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s %q: address must be IP:port: %w", network, address, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if err := checkFamily(network, ap.Addr()); err != nil {
		return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
	}
	fa := fullAddr(ap)
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err := gonet.DialContextTCP(ctx, s, fa, protoOf(ap.Addr()))
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
		}
		return c, nil
	case "udp", "udp4", "udp6":
		c, err := gonet.DialUDP(s, nil, &fa, protoOf(ap.Addr()))
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("dial %s %s: %w", network, address, net.UnknownNetworkError(network))
}

// checkFamily rejects an address of the wrong family for a "tcp4"-style network.
func checkFamily(network string, a netip.Addr) error {
	switch network[len(network)-1] {
	case '4':
		if !a.Is4() {
			return errors.New("not an IPv4 address")
		}
	case '6':
		if !a.Is6() {
			return errors.New("not an IPv6 address")
		}
	}
	return nil
}

// discardLogger is used when a Config has no Log.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
