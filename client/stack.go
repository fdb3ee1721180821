package client

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/tun"
)

// Stack is netstack mode's userspace network stack, as the client's users
// need it. It is injected (Config.NewStack) so that this package, and the
// session above it, do not link gVisor; client/gvisorstack provides it.
type Stack interface {
	// DialContext dials through the tunnel; network is tcp, udp (4 or 6) and the host an IP literal.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	// ListenTCP accepts, on port of the tunnel address, connections the gateway opens into the tunnel (intercepts).
	ListenTCP(port uint16) (net.Listener, error)
	// Ping sends one ICMP echo request to dst through the tunnel and returns its reply's round-trip time.
	Ping(ctx context.Context, dst netip.Addr) (time.Duration, error)
	// Close stops the stack and every connection made through it; idempotent.
	Close() error
}

// StackConfig is what a StackFactory gets from Start.
type StackConfig struct {
	Addr       netip.Addr            // this workstation's tunnel address
	MTU        int                   // the tunnel's inner MTU; never 0 (Start fills in its default)
	Log        *slog.Logger          // never nil (Config.Log, or a discarding one); the stack sets its own component
	Registerer prometheus.Registerer // nil = no metrics
}

// StackFactory builds netstack mode's stack: the tun.Device that
// wireguard-go reads the stack's packets from, and the Stack programs use.
// On error it leaves nothing behind. The gVisor one is gvisorstack.New.
type StackFactory func(cfg StackConfig) (tun.Device, Stack, error)
