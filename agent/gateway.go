// Package agent is bridgetun's in-cluster side. Gateway terminates the
// WireGuard tunnels of workstations and forwards their flows to real
// destinations through a gVisor netstack, so it needs no privileges.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bridgetun/bridgetun/netstack"
	"github.com/bridgetun/bridgetun/tunnel"
)

// GatewayConfig describes one gateway. At least one of UDPPort and
// StreamListener must be set.
type GatewayConfig struct {
	PrivateKey tunnel.Key
	Addr       netip.Addr          // the gateway's own tunnel address
	Peers      []tunnel.PeerConfig // workstations known at start; more via AddPeer
	// UseUDP listens for WireGuard over UDP on UDPPort (0 = any free port).
	UseUDP  bool
	UDPPort int
	// StreamListener accepts stream-transport connections; nil = no stream transport.
	// The gateway closes it on Close.
	StreamListener net.Listener
	MTU            int // 0 = 1420
	// Dial dials real destinations for peers; nil = net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	Deny []netip.Prefix // extra destinations never dialled for peers
	// Policy decides each new flow from a peer (policy.go); nil = every
	// destination the stack does not deny (standalone, tests).
	Policy *Policy
	// Holders counts the flows the policy admits per developer; nil = not.
	Holders *Holders
	// Traces records admitted TCP flows as open traces' gateway hop; nil = not.
	Traces *Traces
	// ClusterDNS, when valid, is reached at Addr:53: the gateway answers DNS
	// on its tunnel address with the resolver its pod uses.
	ClusterDNS netip.Addr
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// Gateway is a running gateway: WireGuard device, binds and forwarding stack.
type Gateway struct {
	dev       *tunnel.Device
	stack     *netstack.Gateway
	listener  net.Listener
	closeOnce sync.Once
	closeErr  error
}

// NewGateway starts a gateway; on error nothing is left running.
func NewGateway(cfg GatewayConfig) (_ *Gateway, err error) {
	if !cfg.Addr.IsValid() {
		return nil, errors.New("gateway: addr: a tunnel address is required")
	}
	if !cfg.UseUDP && cfg.StreamListener == nil {
		return nil, errors.New("gateway: enable UDP or give a stream listener (no transport configured)")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = obs.Component(log, "gateway")
	var paths peerPaths
	stack, err := netstack.NewGateway(netstack.GatewayConfig{
		Addrs:      []netip.Addr{cfg.Addr},
		MTU:        cfg.MTU,
		Log:        log,
		Registerer: cfg.Registerer,
		Dial:       cfg.Dial,
		Deny:       cfg.Deny,
		Redirect:   dnsRedirect(cfg.Addr, cfg.ClusterDNS),
		Allow:      policyHook(cfg.Policy, cfg.Holders, cfg.Traces),
		// A stream workstation's round trip runs through the API server:
		// its flows need windows that grow.
		GrowBuffers: paths.onStream,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway stack: %w", err)
	}
	defer func() {
		if err != nil {
			_ = stack.Close()
		}
	}()
	bind := &dualBind{}
	if cfg.UseUDP {
		bind.udp = tunnel.NewUDPBind()
	}
	if cfg.StreamListener != nil {
		bind.stream = tunnel.NewStreamServerBind(tunnel.StreamServerConfig{
			Listener:   streamAccepts{Listener: cfg.StreamListener, onAccept: paths.invalidate},
			Log:        log,
			Registerer: cfg.Registerer,
		})
	}
	dev, err := tunnel.NewDevice(tunnel.DeviceConfig{
		TUN:  stack.TUN(),
		Bind: bind,
		Config: tunnel.Config{
			PrivateKey: cfg.PrivateKey,
			ListenPort: cfg.UDPPort,
			Peers:      cfg.Peers,
		},
		Log:        log,
		Registerer: cfg.Registerer,
		// Held packets are most of a gateway's memory (bench-scale); its
		// netstack copies what it is given.
		CompactBuffers: tunnel.CompactBoth,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway device: %w", err)
	}
	paths.use(dev.Status)
	log.Info("gateway up", "addr", cfg.Addr, "public_key", cfg.PrivateKey.PublicKey().String(),
		"udp", cfg.UseUDP, "stream", cfg.StreamListener != nil)
	return &Gateway{dev: dev, stack: stack, listener: cfg.StreamListener}, nil
}

// policyHook is p.Allow, counting admitted flows per holder, or nil for
// no policy.
func policyHook(p *Policy, h *Holders, tr *Traces) func(src, dst netip.AddrPort, proto string) (string, bool) {
	if p == nil {
		return nil
	}
	return func(src, dst netip.AddrPort, proto string) (string, bool) {
		reason, ok := p.Allow(src, dst, proto)
		if ok {
			h.Flow(src.Addr(), proto)
			if tr != nil && proto == "tcp" {
				tr.Flow(src.Addr(), dst)
			}
		}
		return reason, ok
	}
}

func dnsRedirect(own, dns netip.Addr) map[netip.AddrPort]netip.AddrPort {
	if !dns.IsValid() {
		return nil
	}
	return map[netip.AddrPort]netip.AddrPort{netip.AddrPortFrom(own, 53): netip.AddrPortFrom(dns, 53)}
}

// AddPeer admits a workstation.
func (g *Gateway) AddPeer(p tunnel.PeerConfig) error { return g.dev.AddPeer(p) }

// RemovePeer forgets a workstation.
func (g *Gateway) RemovePeer(pub tunnel.Key) error { return g.dev.RemovePeer(pub) }

// Status reports each peer's handshake and traffic.
func (g *Gateway) Status() ([]tunnel.PeerStatus, error) { return g.dev.Status() }

// Stack exposes the forwarding stack (to dial into a workstation's tunnel address).
func (g *Gateway) Stack() *netstack.Gateway { return g.stack }

// Close stops the device, then the stack, then the stream listener. Idempotent.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		var errs []error
		errs = append(errs, g.dev.Close(), g.stack.Close())
		if g.listener != nil {
			if err := g.listener.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		g.closeErr = errors.Join(errs...)
	})
	return g.closeErr
}
