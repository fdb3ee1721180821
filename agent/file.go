package agent

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/bridgetun/bridgetun/tunnel"
)

// GatewayFile is the standalone gateway's config file (JSON), used before
// Kubernetes is involved: tests, benchmarks and experiments.
type GatewayFile struct {
	PrivateKey   string     `json:"private_key"`   // base64; "" = generate
	Address      string     `json:"address"`       // tunnel address, e.g. 100.96.0.1
	UDPPort      int        `json:"udp_port"`      // 0 = no UDP transport
	StreamListen string     `json:"stream_listen"` // host:port; "" = no stream transport
	MTU          int        `json:"mtu"`
	Peers        []PeerFile `json:"peers"`
}

// PeerFile is one peer in a config file.
type PeerFile struct {
	PublicKey  string   `json:"public_key"`
	AllowedIPs []string `json:"allowed_ips"`
	Endpoint   string   `json:"endpoint,omitempty"`
	Keepalive  string   `json:"keepalive,omitempty"` // Go duration, e.g. "25s"
}

// ReadGatewayFile parses and checks a gateway config file; errors name the field.
func ReadGatewayFile(path string) (GatewayFile, error) {
	var f GatewayFile
	b, err := os.ReadFile(path)
	if err != nil {
		return f, fmt.Errorf("read gateway config: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("parse gateway config %s: %w", path, err)
	}
	if f.UDPPort == 0 && f.StreamListen == "" {
		return f, fmt.Errorf("gateway config %s: set udp_port and/or stream_listen", path)
	}
	return f, nil
}

// Key returns the configured private key, or a fresh one.
func (f GatewayFile) Key() (tunnel.Key, error) {
	if f.PrivateKey == "" {
		return tunnel.GenerateKey()
	}
	k, err := tunnel.ParseKey(f.PrivateKey)
	if err != nil {
		return k, fmt.Errorf("private_key: %w", err)
	}
	return k, nil
}

// Addr returns the tunnel address.
func (f GatewayFile) Addr() (netip.Addr, error) {
	a, err := netip.ParseAddr(f.Address)
	if err != nil {
		return a, fmt.Errorf("address %q: %w", f.Address, err)
	}
	return a, nil
}

// PeerConfigs converts the peers; errors name the peer and field.
func (f GatewayFile) PeerConfigs() ([]tunnel.PeerConfig, error) {
	return ParsePeers(f.Peers)
}

// ParsePeers converts config-file peers into tunnel peers.
func ParsePeers(peers []PeerFile) ([]tunnel.PeerConfig, error) {
	out := make([]tunnel.PeerConfig, 0, len(peers))
	for i, p := range peers {
		k, err := tunnel.ParseKey(p.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("peers[%d].public_key: %w", i, err)
		}
		pc := tunnel.PeerConfig{PublicKey: k, Endpoint: p.Endpoint}
		for j, s := range p.AllowedIPs {
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("peers[%d].allowed_ips[%d]: %w", i, j, err)
			}
			pc.AllowedIPs = append(pc.AllowedIPs, pfx)
		}
		if p.Keepalive != "" {
			d, err := time.ParseDuration(p.Keepalive)
			if err != nil {
				return nil, fmt.Errorf("peers[%d].keepalive: %w", i, err)
			}
			pc.PersistentKeepalive = d
		}
		out = append(out, pc)
	}
	return out, nil
}
