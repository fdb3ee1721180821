package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/tunnel"
)

// tunnelConfig is what starting the workstation's end of the tunnel needs.
type tunnelConfig struct {
	Client    kubernetes.Interface // finds the gateway's NodePort and node
	Namespace string               // the gateway's
	Pod       func() string        // the gateway pod in use
	Key       tunnel.Key
	Reg       api.RegisterResponse
	Routes    []netip.Prefix
	// Transport is auto, stream or udp; "" = auto: when a UDP endpoint is
	// known, UDP while it answers and the stream when it does not (live,
	// under one WireGuard session); else the stream.
	Transport       string
	GatewayEndpoint string // udp: host:port; "" = node address + NodePort
	StreamDial      func(ctx context.Context) (net.Conn, error)
	Mode            client.Mode
	NewStack        client.StackFactory // netstack mode's stack
	TUNName         string
	AllowConflicts  bool
	MTU             int // 0 = the transport's default
	// Start starts the device; nil = client.Start (a seam for tests).
	Start      func(client.Config) (*client.Client, error)
	Progress   func(format string, args ...any)
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// startTunnel starts the tunnel over the chosen transport and waits for a
// handshake; it returns the client and the transport mode: udp, stream or
// auto (the client's Transport says which path auto is on).
func startTunnel(ctx context.Context, cfg tunnelConfig) (*client.Client, string, error) {
	if cfg.Start == nil {
		cfg.Start = client.Start
	}
	tr := cfg.Transport
	if tr == "" {
		tr = "auto"
	}
	switch tr {
	case "udp":
		return startOver(ctx, cfg, client.TransportUDP, 15*time.Second)
	case "stream":
		return startOver(ctx, cfg, client.TransportStream, 15*time.Second)
	case "auto":
		ep, _ := udpEndpoint(ctx, cfg)
		if ep == "" {
			return startOver(ctx, cfg, client.TransportStream, 15*time.Second)
		}
		c, t, err := startOver(ctx, cfg, client.TransportAuto, 15*time.Second)
		if err == nil && c.Transport() == client.TransportStream {
			cfg.Progress("UDP to %s did not answer; using the stream transport (and moving to UDP when it answers)", ep)
		}
		return c, t, err
	}
	return nil, "", fmt.Errorf("--transport %q: want auto, stream or udp", tr)
}

func startOver(ctx context.Context, cfg tunnelConfig, tr client.Transport, handshakeWithin time.Duration) (*client.Client, string, error) {
	addr, err := netip.ParsePrefix(cfg.Reg.Address)
	if err != nil {
		return nil, "", fmt.Errorf("tunnel address %q: %w", cfg.Reg.Address, err)
	}
	gwKey, err := tunnel.ParseKey(cfg.Reg.GatewayPublicKey)
	if err != nil {
		return nil, "", fmt.Errorf("gateway key: %w", err)
	}
	mtu := cfg.MTU
	if mtu == 0 && tr == client.TransportStream {
		mtu = tunnel.StreamMTU
	}
	cc := client.Config{
		PrivateKey: cfg.Key, Addr: addr, GatewayKey: gwKey, Routes: cfg.Routes, MTU: mtu,
		Mode: cfg.Mode, Transport: tr, TUNName: cfg.TUNName, NewStack: cfg.NewStack,
		AllowConflicts: cfg.AllowConflicts, Log: cfg.Log, Registerer: cfg.Registerer,
	}
	if tr == client.TransportUDP || tr == client.TransportAuto {
		if cc.GatewayEndpoint, err = udpEndpoint(ctx, cfg); err != nil {
			return nil, "", err
		}
	}
	if tr == client.TransportStream || tr == client.TransportAuto {
		cc.StreamDial = cfg.StreamDial
	}
	c, err := cfg.Start(cc)
	if err != nil {
		return nil, "", err
	}
	if err := waitHandshake(ctx, c, handshakeWithin); err != nil {
		_ = c.Close()
		return nil, "", err
	}
	return c, string(tr), nil
}

// udpEndpoint is --gateway-endpoint, else node address + the gateway's NodePort.
func udpEndpoint(ctx context.Context, cfg tunnelConfig) (string, error) {
	if cfg.GatewayEndpoint != "" {
		return cfg.GatewayEndpoint, nil
	}
	svc, err := cfg.Client.CoreV1().Services(cfg.Namespace).Get(ctx, cluster.GatewayName, metav1.GetOptions{})
	if err != nil || len(svc.Spec.Ports) == 0 || svc.Spec.Ports[0].NodePort == 0 {
		return "", errors.New("no UDP endpoint: pass --gateway-endpoint HOST:PORT or --expose nodeport")
	}
	pod, err := cfg.Client.CoreV1().Pods(cfg.Namespace).Get(ctx, cfg.Pod(), metav1.GetOptions{})
	if err != nil || pod.Status.HostIP == "" {
		return "", fmt.Errorf("gateway pod's node address unknown: pass --gateway-endpoint HOST:PORT")
	}
	return net.JoinHostPort(pod.Status.HostIP, strconv.Itoa(int(svc.Spec.Ports[0].NodePort))), nil
}

// waitHandshake polls the client until WireGuard completes a handshake.
func waitHandshake(ctx context.Context, c *client.Client, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		if st, err := c.Status(); err == nil && !st.LastHandshake.IsZero() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no WireGuard handshake with the gateway within %s", within)
		case <-time.After(20 * time.Millisecond): // polling the device's handshake time
		}
	}
}
