package client

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"

	"github.com/bridgetun/bridgetun/tunnel"
)

// File is the standalone client's config file (JSON), for connecting to a
// gateway without Kubernetes: tests, benchmarks, experiments.
type File struct {
	PrivateKey       string   `json:"private_key"`        // base64
	Address          string   `json:"address"`            // e.g. 100.96.0.2/32
	GatewayPublicKey string   `json:"gateway_public_key"` // base64
	Transport        string   `json:"transport"`          // "udp" or "stream"
	GatewayEndpoint  string   `json:"gateway_endpoint"`   // host:port (UDP port, or the stream listener)
	Routes           []string `json:"routes"`             // prefixes sent into the tunnel
	MTU              int      `json:"mtu"`
}

// ReadFile parses a client config file into a Config (without dialer/mode);
// errors name the field.
func ReadFile(path string) (Config, File, error) {
	var f File
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, f, fmt.Errorf("read client config: %w", err)
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return Config{}, f, fmt.Errorf("parse client config %s: %w", path, err)
	}
	cfg := Config{Transport: Transport(f.Transport), GatewayEndpoint: f.GatewayEndpoint, MTU: f.MTU}
	if cfg.PrivateKey, err = tunnel.ParseKey(f.PrivateKey); err != nil {
		return cfg, f, fmt.Errorf("client config %s: private_key: %w", path, err)
	}
	if cfg.GatewayKey, err = tunnel.ParseKey(f.GatewayPublicKey); err != nil {
		return cfg, f, fmt.Errorf("client config %s: gateway_public_key: %w", path, err)
	}
	if cfg.Addr, err = netip.ParsePrefix(f.Address); err != nil {
		return cfg, f, fmt.Errorf("client config %s: address: %w", path, err)
	}
	for i, r := range f.Routes {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return cfg, f, fmt.Errorf("client config %s: routes[%d]: %w", path, i, err)
		}
		cfg.Routes = append(cfg.Routes, p)
	}
	return cfg, f, nil
}
