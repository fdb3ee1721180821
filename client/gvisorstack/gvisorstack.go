// Package gvisorstack gives the workstation client its gVisor userspace
// stack (netstack mode). It is the one place client meets netstack: client
// and session stay free of gVisor, and what wires them (cmd, tests, bench)
// passes New as client.Config.NewStack.
package gvisorstack

import (
	"fmt"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/netstack"
)

var (
	_ client.StackFactory = New
	_ client.Stack        = (*netstack.Client)(nil)
)

// New builds a gVisor stack on cfg.Addr; its TUN carries the stack's
// packets to wireguard-go.
func New(cfg client.StackConfig) (tun.Device, client.Stack, error) {
	s, err := netstack.NewClient(netstack.ClientConfig{
		Addrs: []netip.Addr{cfg.Addr}, MTU: cfg.MTU, Log: cfg.Log, Registerer: cfg.Registerer,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("gvisor stack on %s: %w", cfg.Addr, err)
	}
	return s.TUN(), s, nil
}
