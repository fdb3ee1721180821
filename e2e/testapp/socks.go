package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// socksUDP is a DNS-capable UDP "connection" through a SOCKS5 proxy's UDP
// ASSOCIATE (RFC 1928 §7): each datagram to dst is wrapped in the SOCKS UDP
// header and sent to the relay address the proxy named; replies are unwrapped.
// It implements net.PacketConn so Go's resolver frames queries as datagrams.
type socksUDP struct {
	ctrl  net.Conn // the TCP association: closing it ends the relay
	udp   *net.UDPConn
	relay *net.UDPAddr
	dst   netip.AddrPort
}

// dialSOCKSUDP opens an association through proxy for datagrams to dst.
func dialSOCKSUDP(proxy string, dst netip.AddrPort, timeout time.Duration) (*socksUDP, error) {
	ctrl, err := net.DialTimeout("tcp", proxy, timeout)
	if err != nil {
		return nil, err
	}
	_ = ctrl.SetDeadline(time.Now().Add(timeout))
	fail := func(err error) (*socksUDP, error) { ctrl.Close(); return nil, err }
	if _, err := ctrl.Write([]byte{5, 1, 0}); err != nil { // version 5, one method: no auth
		return fail(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(ctrl, m[:]); err != nil || m[1] != 0 {
		return fail(fmt.Errorf("socks method: %v %v", m, err))
	}
	// UDP ASSOCIATE with 0.0.0.0:0: we do not know our address yet.
	if _, err := ctrl.Write([]byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}); err != nil {
		return fail(err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(ctrl, hdr[:]); err != nil {
		return fail(err)
	}
	if hdr[1] != 0 {
		return fail(fmt.Errorf("socks UDP ASSOCIATE refused: reply code %d", hdr[1]))
	}
	if hdr[3] != 1 {
		return fail(fmt.Errorf("socks relay address type %d: want IPv4", hdr[3]))
	}
	var a [6]byte
	if _, err := io.ReadFull(ctrl, a[:]); err != nil {
		return fail(err)
	}
	relay := &net.UDPAddr{IP: net.IP(a[:4]), Port: int(binary.BigEndian.Uint16(a[4:]))}
	if relay.IP.IsUnspecified() {
		relay.IP = ctrl.RemoteAddr().(*net.TCPAddr).IP
	}
	_ = ctrl.SetDeadline(time.Time{})
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fail(err)
	}
	return &socksUDP{ctrl: ctrl, udp: udp, relay: relay, dst: dst}, nil
}

func (s *socksUDP) Write(p []byte) (int, error) {
	a := s.dst.Addr().As4()
	b := append([]byte{0, 0, 0, 1}, a[:]...)
	b = binary.BigEndian.AppendUint16(b, s.dst.Port())
	if _, err := s.udp.WriteToUDP(append(b, p...), s.relay); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *socksUDP) Read(p []byte) (int, error) {
	buf := make([]byte, 65535)
	n, _, err := s.udp.ReadFromUDP(buf)
	if err != nil {
		return 0, err
	}
	if n < 10 || buf[3] != 1 {
		return 0, errors.New("socks: short or non-IPv4 UDP reply")
	}
	return copy(p, buf[10:n]), nil
}

func (s *socksUDP) ReadFrom(p []byte) (int, net.Addr, error) {
	n, err := s.Read(p)
	return n, net.UDPAddrFromAddrPort(s.dst), err
}

func (s *socksUDP) WriteTo(p []byte, _ net.Addr) (int, error) { return s.Write(p) }
func (s *socksUDP) Close() error                              { s.udp.Close(); return s.ctrl.Close() }
func (s *socksUDP) LocalAddr() net.Addr                       { return s.udp.LocalAddr() }
func (s *socksUDP) RemoteAddr() net.Addr                      { return net.UDPAddrFromAddrPort(s.dst) }
func (s *socksUDP) SetDeadline(t time.Time) error             { return s.udp.SetDeadline(t) }
func (s *socksUDP) SetReadDeadline(t time.Time) error         { return s.udp.SetReadDeadline(t) }
func (s *socksUDP) SetWriteDeadline(t time.Time) error        { return s.udp.SetWriteDeadline(t) }
