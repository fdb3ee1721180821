// Package client is the workstation side of the tunnel: it joins this machine
// to a gateway over WireGuard, either through a kernel TUN device (root; the
// whole machine gets the routes) or through a userspace network stack (no
// root; programs reach the cluster through the stack's dialer). The stack is
// injected (Config.NewStack; gVisor's is client/gvisorstack), so this package
// does not link gVisor.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/bridgetun/bridgetun/tunnel"
)

// Mode says how the workstation's packets reach WireGuard.
type Mode string

const (
	ModeTUN      Mode = "tun"      // kernel TUN device and routes; needs CAP_NET_ADMIN
	ModeNetstack Mode = "netstack" // userspace stack; no privileges
)

// Transport says how WireGuard datagrams reach the gateway.
type Transport string

const (
	TransportUDP    Transport = "udp"    // plain UDP to GatewayEndpoint
	TransportStream Transport = "stream" // framed over a reliable stream from StreamDial
	// TransportAuto carries one WireGuard session over UDP to
	// GatewayEndpoint while it answers and over the stream from StreamDial
	// (kept open) when it does not, moving back when UDP returns.
	TransportAuto Transport = "auto"
)

// Config describes one connection to a gateway.
type Config struct {
	PrivateKey tunnel.Key
	Addr       netip.Prefix // this workstation's tunnel address, e.g. 100.96.0.2/32
	GatewayKey tunnel.Key   // the gateway's public key
	// Routes are the destinations sent into the tunnel (cluster CIDRs and the
	// gateway's tunnel address); they become the gateway peer's AllowedIPs
	// and, in TUN mode, kernel routes.
	Routes    []netip.Prefix
	Mode      Mode
	Transport Transport
	// GatewayEndpoint is "host:port" of the gateway's UDP listener (udp transport).
	GatewayEndpoint string
	// StreamDial opens a stream to the gateway (stream transport).
	StreamDial tunnel.DialFunc
	// BindUDP opens the UDP bind; nil = tunnel.NewUDPBind. Tests use it to
	// open the socket inside a network namespace.
	BindUDP func() conn.Bind
	// NewStack builds netstack mode's userspace stack (gvisorstack.New);
	// required in ModeNetstack, unused in ModeTUN.
	NewStack       StackFactory
	TUNName        string                // TUN mode; "" = bt0
	MTU            int                   // 0 = 1420
	AllowConflicts bool                  // TUN mode: route even where an existing route overlaps
	Keepalive      time.Duration         // 0 = 25s; keeps NAT and port-forward paths warm
	Log            *slog.Logger          // nil discards
	Registerer     prometheus.Registerer // nil = no metrics
}

// defaultMTU is the inner MTU when Config.MTU is 0: room for WireGuard's 80
// bytes of overhead on a 1500-byte underlay.
const defaultMTU = 1420

// Client is a live connection to a gateway.
type Client struct {
	gateway   tunnel.PeerConfig
	devMu     sync.Mutex
	dev       *tunnel.Device
	sw        *tunnel.SwitchBind // auto transport
	stream    *tunnel.StreamBind // stream and auto transports
	transport Transport
	kernelTUN *tunnel.TUN // TUN mode
	stack     Stack       // netstack mode
	filter    *inboundFilter
	closeOnce sync.Once
	closeErr  error
}

// Start joins the gateway. On error nothing is left behind (no device, no route).
func Start(cfg Config) (_ *Client, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	base := cfg.Log
	if base == nil {
		base = slog.New(slog.DiscardHandler)
	}
	log := obs.Component(base, "client")
	c := &Client{}
	defer func() {
		if err != nil {
			_ = c.Close()
		}
	}()
	var td tun.Device
	switch cfg.Mode {
	case ModeTUN:
		c.kernelTUN, err = tunnel.CreateTUN(tunnel.TUNConfig{
			Name: cfg.TUNName, MTU: cfg.MTU, Addr: cfg.Addr, Routes: cfg.Routes,
			AllowConflicts: cfg.AllowConflicts, Log: log,
		})
		if err != nil {
			return nil, err
		}
		td = c.kernelTUN.Device()
	case ModeNetstack:
		mtu := cfg.MTU
		if mtu == 0 {
			mtu = defaultMTU
		}
		// The stack names its own component.
		td, c.stack, err = cfg.NewStack(StackConfig{Addr: cfg.Addr.Addr(), MTU: mtu, Log: base, Registerer: cfg.Registerer})
		if err != nil {
			return nil, fmt.Errorf("start netstack mode: %w", err)
		}
	}
	if c.filter, err = newInboundFilter(td, cfg.Addr.Addr(), cfg.Registerer); err != nil {
		return nil, err
	}
	td = c.filter
	var bind conn.Bind
	peer := tunnel.PeerConfig{PublicKey: cfg.GatewayKey, AllowedIPs: cfg.Routes, PersistentKeepalive: cfg.Keepalive}
	if peer.PersistentKeepalive == 0 {
		peer.PersistentKeepalive = 25 * time.Second
	}
	switch cfg.Transport {
	case TransportUDP:
		if cfg.BindUDP != nil {
			bind = cfg.BindUDP()
		} else {
			bind = tunnel.NewUDPBind()
		}
		peer.Endpoint = cfg.GatewayEndpoint
	case TransportStream:
		// The stream bind supplies its own endpoint: there is one gateway at the other end.
		c.stream = tunnel.NewStreamBind(tunnel.StreamBindConfig{
			Dial: cfg.StreamDial, Log: log, Registerer: cfg.Registerer,
			OnReconnect: func() { c.announce(peer.PublicKey, peer.PersistentKeepalive, log) },
		})
		bind = c.stream
	case TransportAuto:
		var udp conn.Bind
		if cfg.BindUDP != nil {
			udp = cfg.BindUDP()
		}
		// A redialled stream is announced only while it is in use;
		// the switch bind announces the stream when it moves there.
		stream := tunnel.NewStreamBind(tunnel.StreamBindConfig{
			Dial: cfg.StreamDial, Log: log, Registerer: cfg.Registerer,
			OnReconnect: func() {
				if c.sw.Active() == tunnel.TransportStream {
					c.announce(peer.PublicKey, peer.PersistentKeepalive, log)
				}
			},
		})
		if c.sw, err = tunnel.NewSwitchBind(tunnel.SwitchBindConfig{UDP: udp, Stream: stream, Log: log, Registerer: cfg.Registerer}); err != nil {
			return nil, err
		}
		c.stream = stream
		bind = c.sw
		peer.Endpoint = cfg.GatewayEndpoint
	}
	c.transport = cfg.Transport
	dev, err := tunnel.NewDevice(tunnel.DeviceConfig{
		TUN:        td,
		Bind:       bind,
		Config:     tunnel.Config{PrivateKey: cfg.PrivateKey, Peers: []tunnel.PeerConfig{peer}},
		Log:        log,
		Registerer: cfg.Registerer,
		MaxInbound: maxInbound,
		// The kernel TUN's GRO coalesces into the spare room of received
		// packets' buffers; a netstack copies them.
		CompactBuffers: map[Mode]tunnel.Compaction{ModeTUN: tunnel.CompactOutbound, ModeNetstack: tunnel.CompactBoth}[cfg.Mode],
	})
	if err != nil {
		return nil, err
	}
	c.devMu.Lock()
	c.dev, c.gateway = dev, peer
	c.devMu.Unlock()
	log.Info("tunnel up", "mode", cfg.Mode, "transport", cfg.Transport, "addr", cfg.Addr, "routes", len(cfg.Routes))
	return c, nil
}

func (cfg Config) validate() error {
	switch {
	case cfg.PrivateKey.IsZero():
		return errors.New("client config: private_key is empty: generate one with tunnel.GenerateKey")
	case cfg.GatewayKey.IsZero():
		return errors.New("client config: gateway_public_key is empty")
	case !cfg.Addr.IsValid():
		return errors.New("client config: address: a tunnel address such as 100.96.0.2/32 is required")
	case cfg.MTU < 0 || cfg.MTU > tunnel.MaxInnerMTU || (cfg.MTU != 0 && cfg.MTU < 1280):
		return fmt.Errorf("client config: mtu %d: want 1280 to %d", cfg.MTU, tunnel.MaxInnerMTU)
	case cfg.Mode != ModeTUN && cfg.Mode != ModeNetstack:
		return fmt.Errorf("client config: mode %q: want %q or %q", cfg.Mode, ModeTUN, ModeNetstack)
	case cfg.Mode == ModeNetstack && cfg.NewStack == nil:
		return errors.New("client config: netstack mode needs a stack: set NewStack (gvisorstack.New)")
	case (cfg.Transport == TransportUDP || cfg.Transport == TransportAuto) && cfg.GatewayEndpoint == "":
		return fmt.Errorf("client config: gateway_endpoint: the %s transport needs host:port of the gateway", cfg.Transport)
	case (cfg.Transport == TransportStream || cfg.Transport == TransportAuto) && cfg.StreamDial == nil:
		return fmt.Errorf("client config: the %s transport needs a stream dialer", cfg.Transport)
	case cfg.Transport != TransportUDP && cfg.Transport != TransportStream && cfg.Transport != TransportAuto:
		return fmt.Errorf("client config: transport %q: want %q, %q or %q", cfg.Transport, TransportUDP, TransportStream, TransportAuto)
	}
	return nil
}

// announce tells the gateway about a new stream at once: it roams to the
// stream on the first authenticated packet, and a receiving client may have
// nothing to send until its peer retransmits.
func (c *Client) announce(gw tunnel.Key, keepalive time.Duration, log *slog.Logger) {
	c.devMu.Lock()
	dev := c.dev
	c.devMu.Unlock()
	if dev == nil {
		return
	}
	if err := dev.Keepalive(gw, keepalive); err != nil {
		log.Warn("keepalive after reconnect", "err", err)
	}
}

// Rehandshake forgets the WireGuard session with the gateway and starts a
// new handshake at once. A replaced gateway pod has the same key but none of
// the old session's state; without this the client would keep sending on
// dead keys until wireguard-go's 15 s silence timer.
func (c *Client) Rehandshake() error {
	c.devMu.Lock()
	dev := c.dev
	c.devMu.Unlock()
	if dev == nil {
		return nil
	}
	if err := dev.RemovePeer(c.gateway.PublicKey); err != nil {
		return err
	}
	return dev.AddPeer(c.gateway) // a fresh peer with persistent keepalive sends at once
}

// RedialStream drops the stream transport's connections so that they dial
// again now (to the gateway's current pod); without a stream it does
// nothing.
func (c *Client) RedialStream(reason string) {
	if c.stream != nil {
		c.stream.Redial(reason)
	}
}

// SetGatewayKey points the tunnel at a gateway with another key (the
// gateway makes a fresh key each time it starts, so no Secret holds it):
// the old peer goes, the new one handshakes at once. It reports whether
// the key changed.
func (c *Client) SetGatewayKey(k tunnel.Key) (bool, error) {
	c.devMu.Lock()
	defer c.devMu.Unlock()
	if c.dev == nil || k == c.gateway.PublicKey {
		return false, nil
	}
	if err := c.dev.RemovePeer(c.gateway.PublicKey); err != nil {
		return false, err
	}
	c.gateway.PublicKey = k
	return true, c.dev.AddPeer(c.gateway)
}

// ServeUAPI serves wireguard-tools' control socket for the TUN device
// (`wg show bt0`) until ctx ends; in netstack mode there is no interface
// to name, so it returns at once.
func (c *Client) ServeUAPI(ctx context.Context) error {
	if c.kernelTUN == nil {
		return nil
	}
	return c.dev.ServeUAPI(ctx, c.TUNName())
}

// AllowInbound lets new TCP connections from the tunnel reach port on the
// tunnel address (an intercept's port, which the gateway dials). Nothing
// else arriving from the tunnel reaches this machine but replies to flows it
// opened (inbound_filter.go). Calls are counted: the port stays open until
// as many RevokeInbound calls.
func (c *Client) AllowInbound(port uint16) { c.filter.AllowInbound(port) }

// RevokeInbound undoes one AllowInbound: new connections to port are
// dropped again; those already open keep working.
func (c *Client) RevokeInbound(port uint16) { c.filter.RevokeInbound(port) }

// Netstack returns the userspace stack in netstack mode, nil in TUN mode.
func (c *Client) Netstack() Stack { return c.stack }

// TUNName returns the kernel interface in TUN mode, "" otherwise.
func (c *Client) TUNName() string {
	if c.kernelTUN == nil {
		return ""
	}
	return c.kernelTUN.Name()
}

// Transport names the path WireGuard datagrams take now: udp or stream
// (under the auto transport, whichever it is on).
func (c *Client) Transport() Transport {
	if c.sw != nil {
		return Transport(c.sw.Active())
	}
	return c.transport
}

// TransportSwitches counts the auto transport's moves between UDP and the
// stream; 0 for a fixed transport.
func (c *Client) TransportSwitches() int64 {
	if c.sw == nil {
		return 0
	}
	return c.sw.Switches()
}

// Status reports the gateway peer's handshake and traffic.
func (c *Client) Status() (tunnel.PeerStatus, error) {
	st, err := c.dev.Status()
	if err != nil {
		return tunnel.PeerStatus{}, err
	}
	if len(st) == 0 {
		return tunnel.PeerStatus{}, errors.New("status: no gateway peer configured")
	}
	return st[0], nil
}

// Close tears down in order: device (and transport), then routes and TUN or stack. Idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		if c.dev != nil {
			errs = append(errs, c.dev.Close())
		}
		if c.kernelTUN != nil {
			errs = append(errs, c.kernelTUN.Close())
		}
		if c.stack != nil {
			errs = append(errs, c.stack.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// maxInbound bounds the packets the client's WireGuard device holds
// between receiving and writing them to the TUN (tunnel.DeviceConfig.
// MaxInbound; the client has one peer). bench-scale, a TUN client
// downloading in bulk, one run each: RSS 99-116 MiB unbounded, 66-68 at
// 128, 56-64 at 64, 56-60 at 32; bench-dataplane P1 download 1.21/1.31
// Gbit/s unbounded, 1.18/1.42 at 64 (no cost beyond the noise).
const maxInbound = 64
