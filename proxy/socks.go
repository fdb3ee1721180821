package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// SOCKS5 protocol constants (RFC 1928, RFC 1929).
const (
	socksVersion = 0x05

	methodNoAuth       = 0x00
	methodUserPass     = 0x02
	methodNoAcceptable = 0xff
	userPassVersion    = 0x01

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	repSucceeded          = 0x00
	repGeneralFailure     = 0x01
	repNotAllowed         = 0x02
	repNetworkUnreachable = 0x03
	repHostUnreachable    = 0x04
	repConnRefused        = 0x05
	repCmdNotSupported    = 0x07
	repAddrNotSupported   = 0x08
)

// handshakeTimeout bounds a SOCKS5 greeting, authentication and request,
// and an HTTP proxy request's header; a variable so tests can shorten it.
var handshakeTimeout = 30 * time.Second

const dialTimeout = 30 * time.Second

// serveSOCKS accepts SOCKS5 connections on ln until it is closed.
func (s *Server) serveSOCKS(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("socks accept", "err", err)
			}
			return
		}
		if !s.goTracked(func() { s.handleSOCKS(c) }) {
			c.Close()
			return
		}
	}
}

// handleSOCKS runs one SOCKS5 session: negotiation, authentication, one
// request, then the relay.
func (s *Server) handleSOCKS(c net.Conn) {
	stop := s.closeOnDone(c)
	defer stop()
	defer c.Close()
	log := s.log.With("client", c.RemoteAddr().String())

	c.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := s.socksAuth(c); err != nil {
		log.Debug("socks negotiation failed", "err", err)
		if errors.Is(err, errAuth) {
			s.metrics.count("socks", resultAuthFailed)
		}
		return
	}
	var hdr [4]byte // VER CMD RSV ATYP
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		log.Debug("socks read request", "err", err)
		return
	}
	if hdr[0] != socksVersion {
		log.Debug("socks request: bad version", "version", hdr[0])
		return
	}
	host, port, err := readAddr(c, hdr[3])
	if errors.Is(err, errAddrType) {
		writeReply(c, repAddrNotSupported, netip.AddrPort{})
		s.metrics.count("socks", resultBadRequest)
		return
	}
	if err != nil {
		log.Debug("socks read address", "err", err)
		return
	}
	switch hdr[1] {
	case cmdConnect:
		s.socksConnect(c, host, port)
	case cmdUDPAssociate:
		s.socksUDP(c)
	default: // BIND and unknown commands
		writeReply(c, repCmdNotSupported, netip.AddrPort{})
		s.metrics.count("socks", resultBadRequest)
	}
}

// socksAuth negotiates the method and checks credentials (RFC 1929).
func (s *Server) socksAuth(c net.Conn) error {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return fmt.Errorf("greeting: unsupported version %d", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return fmt.Errorf("read methods: %w", err)
	}
	want := byte(methodNoAuth)
	if s.authRequired() {
		want = methodUserPass
	}
	if !slices.Contains(methods, want) {
		c.Write([]byte{socksVersion, methodNoAcceptable})
		return fmt.Errorf("no acceptable method in %v: %w", methods, errAuth)
	}
	if _, err := c.Write([]byte{socksVersion, want}); err != nil {
		return fmt.Errorf("write method: %w", err)
	}
	if want == methodNoAuth {
		return nil
	}
	// VER ULEN UNAME PLEN PASSWD
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	if b[0] != userPassVersion {
		return fmt.Errorf("auth: unsupported version %d", b[0])
	}
	user, err := readLenPrefixed(c)
	if err != nil {
		return fmt.Errorf("read username: %w", err)
	}
	pass, err := readLenPrefixed(c)
	if err != nil {
		return fmt.Errorf("read password: %w", err)
	}
	if !s.credentialsOK(user, pass) {
		c.Write([]byte{userPassVersion, 0x01})
		return fmt.Errorf("user %q: %w", user, errAuth)
	}
	_, err = c.Write([]byte{userPassVersion, 0x00})
	return err
}

// credentialsOK compares in constant time.
func (s *Server) credentialsOK(user, pass string) bool {
	u := subtle.ConstantTimeCompare([]byte(user), []byte(s.cfg.Username))
	p := subtle.ConstantTimeCompare([]byte(pass), []byte(s.cfg.Password))
	return u&p == 1
}

// socksConnect dials host:port and relays.
func (s *Server) socksConnect(c net.Conn, host string, port uint16) {
	ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
	up, err := s.dialTCP(ctx, host, port)
	cancel()
	if err != nil {
		code := replyCode(err)
		s.log.Debug("socks connect failed", "dest", net.JoinHostPort(host, fmt.Sprint(port)), "reply", code, "err", err)
		s.metrics.count("socks", resultOf(err))
		writeReply(c, code, netip.AddrPort{})
		return
	}
	stop := s.closeOnDone(up)
	defer stop()
	defer up.Close()
	bnd, _ := netip.ParseAddrPort(up.LocalAddr().String())
	s.metrics.count("socks", resultOK) // before the reply: a client that sees it sees the count
	if err := writeReply(c, repSucceeded, bnd); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	s.relay(c, up)
}

// replyCode maps a dial error to a SOCKS5 reply code.
func replyCode(err error) byte {
	switch {
	case errors.Is(err, errDenied):
		return repNotAllowed
	case errors.Is(err, errUnresolvable), errors.Is(err, syscall.EHOSTUNREACH):
		return repHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return repConnRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return repNetworkUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return repHostUnreachable
	}
	// gVisor's gonet reports tcpip errors as plain strings
	// ("connection was refused", "no route to host").
	switch msg := err.Error(); {
	case strings.Contains(msg, "refused"):
		return repConnRefused
	case strings.Contains(msg, "no route to host"), strings.Contains(msg, "host is unreachable"):
		return repHostUnreachable
	case strings.Contains(msg, "network is unreachable"):
		return repNetworkUnreachable
	}
	return repGeneralFailure
}

// resultOf maps a dial error to the metrics result label.
func resultOf(err error) string {
	switch {
	case errors.Is(err, errDenied):
		return resultDenied
	case errors.Is(err, errUnresolvable):
		return resultUnresolved
	}
	return resultDialFailed
}

var errAddrType = errors.New("address type not supported")

// readAddr reads DST.ADDR and DST.PORT of address type atyp.
func readAddr(r io.Reader, atyp byte) (string, uint16, error) {
	var n int
	switch atyp {
	case atypIPv4:
		n = 4
	case atypIPv6:
		n = 16
	case atypDomain:
		var l [1]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return "", 0, err
		}
		n = int(l[0])
	default:
		return "", 0, fmt.Errorf("type %d: %w", atyp, errAddrType)
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", 0, err
	}
	port := binary.BigEndian.Uint16(b[n:])
	if atyp == atypDomain {
		return string(b[:n]), port, nil
	}
	ip, _ := netip.AddrFromSlice(b[:n])
	return ip.String(), port, nil
}

// parseAddr parses ATYP DST.ADDR DST.PORT at the start of b and returns the
// number of bytes used.
func parseAddr(b []byte) (string, uint16, int, error) {
	if len(b) < 1 {
		return "", 0, 0, io.ErrUnexpectedEOF
	}
	r := &countReader{b: b[1:]}
	host, port, err := readAddr(r, b[0])
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return host, port, 1 + r.n, err
}

// appendAddr appends ATYP DST.ADDR DST.PORT for ap (IPv4 for 4-in-6).
func appendAddr(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, atypIPv4)
		b4 := a.As4()
		b = append(b, b4[:]...)
	case a.Is6():
		b = append(b, atypIPv6)
		b16 := a.As16()
		b = append(b, b16[:]...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// writeReply writes VER REP RSV BND.ADDR BND.PORT.
func writeReply(w io.Writer, code byte, bnd netip.AddrPort) error {
	_, err := w.Write(appendAddr([]byte{socksVersion, code, 0}, bnd))
	return err
}

func readLenPrefixed(r io.Reader) (string, error) {
	var l [1]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "", err
	}
	b := make([]byte, l[0])
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// countReader reads from b and counts the bytes consumed.
type countReader struct {
	b []byte
	n int
}

func (r *countReader) Read(p []byte) (int, error) {
	if r.n >= len(r.b) {
		return 0, io.EOF
	}
	k := copy(p, r.b[r.n:])
	r.n += k
	return k, nil
}
