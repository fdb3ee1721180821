package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	maxUDPDests   = 256       // destinations per association
	maxDatagram   = 64 * 1024 // largest datagram relayed
	udpDialTimout = 10 * time.Second
)

// udpAssoc is one UDP ASSOCIATE: a relay socket for the client and one
// dialled conn per destination. It lives as long as the control connection.
type udpAssoc struct {
	s        *Server
	pc       *net.UDPConn
	clientIP netip.Addr                     // datagrams from other IPs are dropped
	client   atomic.Pointer[netip.AddrPort] // learned from the first datagram

	mu     sync.Mutex
	closed bool
	dests  map[netip.AddrPort]net.Conn
	wg     sync.WaitGroup // per-destination readers
}

// socksUDP serves UDP ASSOCIATE on control connection c: it binds a relay
// socket on the IP c arrived on, replies with its address, and relays until
// c closes.
func (s *Server) socksUDP(c net.Conn) {
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.Addr(), 0)))
	if err != nil {
		s.log.Error("socks udp associate: bind relay", "addr", local.Addr().String(), "err", err)
		s.metrics.count("socks_udp", resultDialFailed)
		writeReply(c, repGeneralFailure, netip.AddrPort{})
		return
	}
	a := &udpAssoc{
		s:        s,
		pc:       pc,
		clientIP: remote.Addr().Unmap(),
		dests:    make(map[netip.AddrPort]net.Conn),
	}
	bnd, _ := netip.ParseAddrPort(pc.LocalAddr().String())
	if err := writeReply(c, repSucceeded, bnd); err != nil {
		pc.Close()
		return
	}
	s.metrics.count("socks_udp", resultOK)
	s.log.Debug("socks udp associate", "client", remote.String(), "relay", bnd.String())

	done := make(chan struct{})
	go func() {
		defer close(done)
		a.readClient()
	}()
	// The association ends when the control connection closes (or Close
	// closes it).
	c.SetDeadline(time.Time{})
	io.Copy(io.Discard, c)
	a.close()
	<-done
	a.wg.Wait()
}

// close closes the relay socket and every destination conn.
func (a *udpAssoc) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	a.pc.Close()
	for _, d := range a.dests {
		d.Close()
	}
}

// readClient reads datagrams from the client and forwards their payloads.
func (a *udpAssoc) readClient() {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() != a.clientIP {
			continue
		}
		if cl := a.client.Load(); cl == nil {
			a.client.Store(&from)
		} else if *cl != from {
			continue
		}
		a.forward(buf[:n])
	}
}

// forward parses RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA and sends DATA to
// the destination. Fragments, bad headers, and denied or unresolvable
// destinations are dropped.
func (a *udpAssoc) forward(b []byte) {
	if len(b) < 4 || b[2] != 0 { // FRAG must be 0
		return
	}
	host, port, n, err := parseAddr(b[3:])
	if err != nil {
		return
	}
	payload := b[3+n:]
	ctx, cancel := context.WithTimeout(a.s.ctx, udpDialTimout)
	defer cancel()
	addrs, err := a.s.resolve(ctx, host)
	if err != nil {
		a.s.log.Debug("socks udp: drop datagram", "dest", host, "err", err)
		return
	}
	d, err := a.dest(ctx, netip.AddrPortFrom(addrs[0], port))
	if err != nil {
		a.s.log.Debug("socks udp: drop datagram", "dest", host, "err", err)
		return
	}
	d.Write(payload)
}

// dest returns the conn for dst, dialling it (and starting its reply reader)
// on first use.
func (a *udpAssoc) dest(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	a.mu.Lock()
	d, ok := a.dests[dst]
	full := len(a.dests) >= maxUDPDests
	a.mu.Unlock()
	if ok {
		return d, nil
	}
	if full {
		return nil, errors.New("too many destinations in this association")
	}
	d, err := a.s.cfg.Dial(ctx, "udp", dst.String())
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		d.Close()
		return nil, net.ErrClosed
	}
	a.dests[dst] = d
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.readDest(dst, d)
	}()
	return d, nil
}

// readDest wraps replies from dst in the SOCKS UDP header and sends them to
// the client.
func (a *udpAssoc) readDest(dst netip.AddrPort, d net.Conn) {
	hdr := appendAddr([]byte{0, 0, 0}, dst)
	buf := make([]byte, len(hdr)+maxDatagram)
	copy(buf, hdr)
	for {
		n, err := d.Read(buf[len(hdr):])
		if errors.Is(err, syscall.ECONNREFUSED) {
			continue // ICMP port unreachable for an earlier datagram
		}
		if err != nil {
			return // closed with the association
		}
		if cl := a.client.Load(); cl != nil {
			a.pc.WriteToUDPAddrPort(buf[:len(hdr)+n], *cl)
		}
	}
}
