package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ClientConfig configures NewClient.
type ClientConfig struct {
	Addrs      []netip.Addr          // the workstation's tunnel address(es); at least one
	MTU        int                   // 0 = 1420
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
}

// Client is a userspace stack for a workstation without root: applications
// dial through it and accept on its tunnel address, and its packets travel
// over wireguard-go via TUN().
type Client struct {
	cfg   ClientConfig
	log   *slog.Logger
	ep    *linkEndpoint
	stack *stack.Stack
	drop  prometheus.CounterFunc

	once sync.Once
}

// NewClient builds the client's stack; hand TUN() to wireguard-go.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("new netstack client: no tunnel address")
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	log := cfg.Log
	if log == nil {
		log = discardLogger()
	}
	c := &Client{cfg: cfg, log: obs.Component(log, "netstack_client"), ep: newLinkEndpoint(cfg.MTU)}
	c.drop = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "bridgetun_client_netstack_link_dropped_packets_total",
		Help: "Outbound packets dropped between the client's gVisor stack and WireGuard.",
	}, func() float64 { return float64(c.ep.dropped.Load()) })
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.drop); err != nil {
			return nil, fmt.Errorf("new netstack client: register metrics: %w", err)
		}
	}
	// acceptLoopback: the gateway refuses loopback destinations with an RST
	// from that address; dropping it as a martian would turn a prompt
	// "connection refused" into a timeout.
	s, err := newStack(c.ep, cfg.Addrs, stackOptions{acceptLoopback: true})
	if err != nil {
		if cfg.Registerer != nil {
			cfg.Registerer.Unregister(c.drop)
		}
		return nil, fmt.Errorf("new netstack client: %w", err)
	}
	c.stack = s
	return c, nil
}

// TUN returns the device to hand to wireguard-go.
func (c *Client) TUN() tun.Device { return tunDevice{c.ep} }

// DialContext dials through the tunnel. network is tcp/tcp4/tcp6/udp/udp4/udp6
// and the host must be an IP literal (name resolution is the caller's job).
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	conn, err := dialStack(ctx, c.stack, network, address)
	if err != nil {
		return nil, fmt.Errorf("netstack client: %w", err)
	}
	return conn, nil
}

// ListenTCP listens on port of the first tunnel address, for connections the
// gateway opens into the tunnel (intercepts).
func (c *Client) ListenTCP(port uint16) (net.Listener, error) {
	a := c.cfg.Addrs[0].Unmap()
	l, err := gonet.ListenTCP(c.stack, fullAddr(netip.AddrPortFrom(a, port)), protoOf(a))
	if err != nil {
		return nil, fmt.Errorf("netstack client: listen tcp %s: %w", netip.AddrPortFrom(a, port), err)
	}
	return l, nil
}

// ListenUDP listens on port of the first tunnel address.
func (c *Client) ListenUDP(port uint16) (net.PacketConn, error) {
	a := c.cfg.Addrs[0].Unmap()
	fa := fullAddr(netip.AddrPortFrom(a, port))
	pc, err := gonet.DialUDP(c.stack, &fa, nil, protoOf(a))
	if err != nil {
		return nil, fmt.Errorf("netstack client: listen udp %s: %w", netip.AddrPortFrom(a, port), err)
	}
	return pc, nil
}

// Ping sends one ICMP echo request to dst through the tunnel and returns the
// round-trip time of its reply; it fails when ctx ends first.
func (c *Client) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	dst = dst.Unmap()
	rtt, err := c.ping(ctx, dst)
	if err != nil {
		return 0, fmt.Errorf("netstack client: ping %s: %w", dst, err)
	}
	return rtt, nil
}

func (c *Client) ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	proto, netProto := icmp.ProtocolNumber4, protoOf(dst)
	reqType, replyType := byte(header.ICMPv4Echo), byte(header.ICMPv4EchoReply)
	if dst.Is6() {
		proto = icmp.ProtocolNumber6
		reqType, replyType = byte(header.ICMPv6EchoRequest), byte(header.ICMPv6EchoReply)
	}
	var wq waiter.Queue
	ep, tErr := c.stack.NewEndpoint(proto, netProto, &wq)
	if tErr != nil {
		return 0, fmt.Errorf("new icmp endpoint: %s", tErr)
	}
	defer ep.Close()
	if tErr := ep.Connect(fullAddr(netip.AddrPortFrom(dst, 0))); tErr != nil {
		return 0, fmt.Errorf("connect icmp endpoint: %s", tErr)
	}
	entry, readable := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)

	// The endpoint fills in the identifier (its port) and the checksum.
	seq := uint16(rand.N(1 << 16))
	req := make([]byte, 8+16)
	req[0] = reqType
	binary.BigEndian.PutUint16(req[6:], seq)
	copy(req[8:], "bridgetun-ping--")
	start := time.Now()
	if _, tErr := ep.Write(bytes.NewReader(req), tcpip.WriteOptions{}); tErr != nil {
		return 0, fmt.Errorf("send echo request: %s", tErr)
	}
	for {
		var buf bytes.Buffer
		_, tErr := ep.Read(&buf, tcpip.ReadOptions{})
		if _, ok := tErr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-readable:
				continue
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		if tErr != nil {
			return 0, fmt.Errorf("receive echo reply: %s", tErr)
		}
		b := buf.Bytes()
		if len(b) >= 8 && b[0] == replyType && binary.BigEndian.Uint16(b[6:]) == seq {
			return time.Since(start), nil
		}
	}
}

// Close stops the stack and closes every connection made through it. Idempotent.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.ep.Close()
		c.stack.Close()
		c.stack.Wait()
		if c.cfg.Registerer != nil {
			c.cfg.Registerer.Unregister(c.drop)
		}
	})
	return nil
}
