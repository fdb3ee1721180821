package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/version"
	"github.com/bridgetun/bridgetun/tunnel"
)

// startTunnel starts the workstation's end of the tunnel; the intercepts'
// inbound listeners and dials go through it from then on.
func (s *Session) startTunnel(ctx context.Context, conn *cluster.Conn, key tunnel.Key) error {
	c, tr, err := startTunnel(ctx, tunnelConfig{
		Client: conn.Client, Namespace: s.facts.gwNamespace, Pod: s.link.Pod, Key: key, Reg: s.link.Registration(),
		Routes: s.facts.routes, Transport: s.cfg.Transport, GatewayEndpoint: s.cfg.GatewayEndpoint, StreamDial: s.link.StreamDial,
		Mode: s.cfg.Mode, NewStack: s.cfg.NewStack, TUNName: s.cfg.TUNName, AllowConflicts: s.cfg.AllowConflicts, MTU: s.cfg.MTU,
		Progress: s.progress, Log: s.cfg.Log, Registerer: s.cfg.Registerer,
	})
	if err != nil {
		return err
	}
	s.tun, s.facts.transport = c, tr
	s.link.OnReplaced(func() {
		// A gateway that restarted has a new key (it makes one at start).
		if k, err := tunnel.ParseKey(s.link.Registration().GatewayPublicKey); err == nil {
			changed, err := c.SetGatewayKey(k)
			if err != nil {
				s.cfg.Log.Warn("switch to the gateway's new key", "err", err)
			}
			if changed {
				s.cfg.Log.Info("the gateway has a new key (it restarted): handshaking with it")
				return
			}
		}
		if err := c.Rehandshake(); err != nil {
			s.cfg.Log.Warn("rehandshake with the new gateway pod", "err", err)
		}
	})
	s.link.OnStreamStale(c.RedialStream)
	s.ic.cfg.Listen = s.inboundListener
	s.ic.cfg.Inbound = c // the tunnel lets in only the intercepts' ports (and replies)
	// A renewal that finds this workstation forgotten (a sleep past the
	// registration TTL) registers again; the link re-keys the tunnel.
	s.ic.cfg.Reregister = s.link.Register
	if st := c.Netstack(); st != nil {
		s.ic.cfg.Dial = st.DialContext
	}
	return nil
}

// startServices starts DNS, proxies and forwards; each one's undo goes on
// closers.
func (s *Session) startServices(ctx context.Context, conn *cluster.Conn, closers *[]func() error) error {
	reg := s.link.Registration()
	d := dnsConfig{Client: conn.Client, Namespace: conn.Namespace, ClusterDomain: reg.ClusterDomain,
		GatewayDNS: net.JoinHostPort(reg.GatewayAddress, "53"), Listen: "127.0.0.1:0", Link: s.tunName(),
		StateDir: s.cfg.Paths.systemDir(), Log: s.cfg.Log, Registerer: s.cfg.Registerer}
	stack := s.tun.Netstack()
	if stack != nil {
		d.ClusterDial = stack.DialContext
	}
	if s.cfg.Mode == client.ModeTUN && s.cfg.DNS != DNSNone {
		addr, err := netip.ParsePrefix(reg.Address)
		if err != nil {
			return fmt.Errorf("tunnel address %q: %w", reg.Address, err)
		}
		d.Listen, d.LoopbackListen, d.ConfigureOS = net.JoinHostPort(addr.Addr().String(), "53"), loopbackResolver, true
	}
	var err error
	if s.dns, err = startDNS(ctx, d); err != nil {
		return err
	}
	*closers = append(*closers, s.dns.Close)
	if s.dns.os != nil {
		s.progress("DNS: cluster names resolve through %s (%s); other names go to %v", s.dns.listen, s.dns.mode(), s.dns.upstreams)
	} else {
		s.progress("DNS: split resolver on %s (OS settings unchanged)", s.dns.listen)
	}
	p := proxyConfig{DNS: s.dns.listen, SOCKSAddr: s.cfg.SOCKSAddr, HTTPAddr: s.cfg.HTTPProxyAddr, SOCKSAuth: s.cfg.SOCKSAuth, HTTPAuth: s.cfg.HTTPProxyAuth, Log: s.cfg.Log, Registerer: s.cfg.Registerer}
	f := forwardConfig{Client: conn.Client, Namespace: conn.Namespace, Specs: s.cfg.Forwards, All: s.cfg.ForwardAll, Log: s.cfg.Log, Note: s.progress}
	if stack != nil {
		p.Dial = stack.DialContext
		f.Listen = func(ctx context.Context, network, local, remote string) (net.Addr, io.Closer, error) {
			l, err := s.tun.ListenForward(ctx, network, local, remote, s.cfg.Log)
			if err != nil {
				return nil, nil, err
			}
			return l.Addr(), l, nil
		}
	}
	if s.proxy, err = startProxy(p); err != nil {
		return err
	}
	*closers = append(*closers, s.proxy.Close)
	if s.proxy != nil {
		s.progress("proxies: SOCKS5 %s, HTTP %s (names resolve in the cluster)", orOff(s.proxy.socks), orOff(s.proxy.http))
	}
	s.fwd = newForwardSet(f)
	if err := s.fwd.Open(ctx); err != nil {
		return err
	}
	*closers = append(*closers, func() error { s.fwd.Close(); return nil })
	return nil
}

// inboundListener accepts the gateway's intercepted connections for port on
// the tunnel address. In TUN mode a local server bound to every address
// already receives them: then it returns a nil listener.
func (s *Session) inboundListener(port int) (net.Listener, error) {
	if st := s.tun.Netstack(); st != nil {
		return st.ListenTCP(uint16(port))
	}
	reg := s.link.Registration()
	p, err := netip.ParsePrefix(reg.Address)
	if err != nil {
		return nil, fmt.Errorf("tunnel address %q: %w", reg.Address, err)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(p.Addr(), uint16(port)).String())
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, nil
	}
	return ln, err
}

// Status reports the session.
func (s *Session) Status() Status {
	reg := s.link.Registration()
	st := Status{
		State: s.link.State(), PID: os.Getpid(),
		Context: s.facts.context, Namespace: s.facts.namespace, GatewayNamespace: s.facts.gwNamespace,
		GatewayPod: s.link.Pod(), GatewayVersion: reg.Version, ClientVersion: version.Version,
		Mode: string(s.cfg.Mode), Transport: s.facts.transport, TUN: s.tunName(),
		TunnelAddress: reg.Address, GatewayAddress: reg.GatewayAddress,
		ClusterDNS: reg.ClusterDNS, ClusterDomain: reg.ClusterDomain,
		Reconnects: s.link.Reconnects(), Since: s.facts.since,
		DNSMode: s.dns.mode(), Forwards: s.fwd.list(), Intercepts: s.ic.Infos(),
	}
	if s.proxy != nil {
		st.SOCKSProxy, st.HTTPProxy = s.proxy.socks, s.proxy.http
	}
	if s.dns != nil {
		st.DNSListen, st.DNSUpstreams, st.DNSSearch, st.DNSRouting = s.dns.listen, s.dns.upstreams, s.dns.search, s.dns.routing
	}
	for _, r := range s.facts.routes {
		st.Routes = append(st.Routes, r.String())
	}
	if s.tun != nil {
		st.Transport, st.TransportMode, st.TransportSwitch = string(s.tun.Transport()), s.facts.transport, s.tun.TransportSwitches()
	}
	if ps, err := s.tun.Status(); err == nil {
		st.LastHandshake, st.RxBytes, st.TxBytes = ps.LastHandshake, ps.RxBytes, ps.TxBytes
		if !ps.LastHandshake.IsZero() {
			st.HandshakeAgeSec = time.Since(ps.LastHandshake).Seconds()
		}
	}
	return st
}

// registerMetrics exports the session's gauges; it runs once every
// component they read exists.
func (s *Session) registerMetrics() {
	reg := s.cfg.Registerer
	if reg == nil {
		return
	}
	_ = reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bridgetun_tunnel_handshake_age_seconds",
		Help: "Seconds since the last WireGuard handshake with the gateway.",
	}, func() float64 {
		ps, err := s.tun.Status()
		if err != nil || ps.LastHandshake.IsZero() {
			return 0
		}
		return time.Since(ps.LastHandshake).Seconds()
	}))
	_ = reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "bridgetun_tunnel_transport_reconnects_total",
		Help: "Stream transport redials after the first connection.",
	}, func() float64 { return float64(s.link.Reconnects()) }))
	_ = reg.Register(s.ic.cfg.Connections)
	_ = reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "bridgetun_intercept_active",
		Help: "Intercepts this workstation holds that are active (routed here), not reconnecting or lost.",
	}, func() float64 {
		n := 0
		for _, it := range s.ic.Infos() {
			if it.State == InterceptActive {
				n++
			}
		}
		return float64(n)
	}))
}

func (s *Session) progress(format string, args ...any) {
	fmt.Fprintf(s.cfg.Progress, format+"\n", args...)
	s.cfg.Log.Info(fmt.Sprintf(format, args...))
}

func (s *Session) tunName() string {
	if s.cfg.Mode != client.ModeTUN {
		return ""
	}
	if s.cfg.TUNName == "" {
		return "bt0"
	}
	return s.cfg.TUNName
}

func (s *Session) describeDevice() string {
	if s.cfg.Mode == client.ModeTUN {
		return "TUN " + s.tunName() + " (" + s.facts.transport + ")"
	}
	return "netstack (" + s.facts.transport + ")"
}

func orOff(addr string) string {
	if addr == "" {
		return "off"
	}
	return addr
}
