package netstack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// icmpv6ErrorMax bounds an ICMPv6 error to the IPv6 minimum MTU (RFC 4443
// 2.4(c)): as much of the offending packet as fits.
const icmpv6ErrorMax = 1280

// prohibited builds the ICMP error a filtering router sends for the IP
// packet orig: destination unreachable, administratively prohibited (ICMPv4
// type 3 code 13, ICMPv6 type 1 code 1), from orig's destination back to its
// source, quoting orig's header and the start of its payload so the
// sender's stack finds the socket. A Linux client fails the connect or
// the send at once (EHOSTUNREACH / EACCES) instead of waiting.
func prohibited(orig []byte) ([]byte, error) {
	if len(orig) == 0 {
		return nil, errors.New("icmp prohibited: empty packet")
	}
	switch orig[0] >> 4 {
	case 4:
		ip := header.IPv4(orig)
		if !ip.IsValid(len(orig)) {
			return nil, fmt.Errorf("icmp prohibited: invalid IPv4 packet of %d bytes", len(orig))
		}
		quote := orig[:min(int(ip.TotalLength()), int(ip.HeaderLength())+8)]
		out, icmp := icmpv4Back(ip, header.ICMPv4MinimumSize+len(quote))
		ic := header.ICMPv4(icmp)
		ic.SetType(header.ICMPv4DstUnreachable)
		ic.SetCode(header.ICMPv4AdminProhibited)
		copy(ic[header.ICMPv4MinimumSize:], quote)
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		return out, nil
	case 6:
		ip := header.IPv6(orig)
		if !ip.IsValid(len(orig)) {
			return nil, fmt.Errorf("icmp prohibited: invalid IPv6 packet of %d bytes", len(orig))
		}
		quote := orig[:min(len(orig), icmpv6ErrorMax-header.IPv6MinimumSize-header.ICMPv6MinimumSize)]
		out, icmp := icmpv6Back(ip, header.ICMPv6MinimumSize+len(quote))
		src, dst := ip.DestinationAddress(), ip.SourceAddress()
		ic := header.ICMPv6(icmp)
		ic.SetType(header.ICMPv6DstUnreachable)
		ic.SetCode(header.ICMPv6Prohibited)
		copy(ic[header.ICMPv6MinimumSize:], quote)
		ic.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: ic, Src: src, Dst: dst}))
		return out, nil
	}
	return nil, fmt.Errorf("icmp prohibited: IP version %d", orig[0]>>4)
}

// udpProhibited is prohibited for a UDP datagram from src to dst, whose
// bytes gVisor's forwarder does not hand out: the quoted header is rebuilt
// from the flow's addresses and ports, which is all a receiver matches on.
func udpProhibited(src, dst netip.AddrPort) []byte {
	var orig []byte
	if src.Addr().Is4() {
		orig = make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize)
		header.IPv4(orig).Encode(&header.IPv4Fields{
			TotalLength: uint16(len(orig)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(src.Addr().As4()),
			DstAddr:     tcpip.AddrFrom4(dst.Addr().As4()),
		})
		header.IPv4(orig).SetChecksum(^header.IPv4(orig).CalculateChecksum())
	} else {
		orig = make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize)
		header.IPv6(orig).Encode(&header.IPv6Fields{
			PayloadLength:     header.UDPMinimumSize,
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16(src.Addr().As16()),
			DstAddr:           tcpip.AddrFrom16(dst.Addr().As16()),
		})
	}
	udp := orig[len(orig)-header.UDPMinimumSize:]
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], header.UDPMinimumSize)
	out, err := prohibited(orig)
	if err != nil {
		panic(err) // orig is built right above
	}
	return out
}
