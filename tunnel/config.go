package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// PeerConfig describes one WireGuard peer.
type PeerConfig struct {
	PublicKey Key
	// Endpoint is "host:port" for UDP; "" means learn it from the peer's
	// authenticated packets. Stream binds ignore it: the client always
	// sends into its stream, the server answers on the stream a peer used.
	Endpoint            string
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration // 0 = off; whole seconds
}

// Config is the WireGuard configuration of one device.
type Config struct {
	PrivateKey Key
	ListenPort int // 0 = any port (UDP) or none (stream)
	Peers      []PeerConfig
}

// Validate checks c and reports the first problem, naming the field the
// way a config file would: "peers[1].allowed_ips[0]: ...".
func (c Config) Validate() error {
	if c.PrivateKey.IsZero() {
		return errors.New("private_key: must be set")
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return fmt.Errorf("listen_port: %d out of range 0-65535", c.ListenPort)
	}
	seen := make(map[Key]int, len(c.Peers))
	self := c.PrivateKey.PublicKey()
	for i, p := range c.Peers {
		if err := p.validate(); err != nil {
			return fmt.Errorf("peers[%d].%w", i, err)
		}
		if p.PublicKey == self {
			return fmt.Errorf("peers[%d].public_key: is this device's own public key", i)
		}
		if j, ok := seen[p.PublicKey]; ok {
			return fmt.Errorf("peers[%d].public_key: duplicates peers[%d]", i, j)
		}
		seen[p.PublicKey] = i
	}
	return nil
}

func (p PeerConfig) validate() error {
	if p.PublicKey.IsZero() {
		return errors.New("public_key: must be set")
	}
	if p.Endpoint != "" {
		host, port, err := net.SplitHostPort(p.Endpoint)
		if err != nil {
			return fmt.Errorf("endpoint: %q: %w", p.Endpoint, err)
		}
		if host == "" {
			return fmt.Errorf("endpoint: %q: missing host", p.Endpoint)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("endpoint: %q: port must be 1-65535", p.Endpoint)
		}
	}
	if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535*time.Second {
		return fmt.Errorf("persistent_keepalive: %v out of range 0-65535s", p.PersistentKeepalive)
	}
	if p.PersistentKeepalive%time.Second != 0 {
		return fmt.Errorf("persistent_keepalive: %v is not a whole number of seconds", p.PersistentKeepalive)
	}
	for j, pfx := range p.AllowedIPs {
		if !pfx.IsValid() {
			return fmt.Errorf("allowed_ips[%d]: invalid prefix", j)
		}
		if pfx != pfx.Masked() {
			return fmt.Errorf("allowed_ips[%d]: %s has host bits set (did you mean %s?)", j, pfx, pfx.Masked())
		}
	}
	return nil
}

// UAPI renders c as wireguard-go IpcSet text. replace_peers=true makes the
// device match c exactly.
func (c Config) UAPI() string {
	return c.uapi(func(s string) string { return s })
}

// uapi renders c, passing each peer endpoint through endpoint first so the
// device can adapt it to its bind (resolve a name, or ignore it for streams).
func (c Config) uapi(endpoint func(string) string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", c.PrivateKey.hex())
	if c.ListenPort != 0 {
		fmt.Fprintf(&b, "listen_port=%d\n", c.ListenPort)
	}
	b.WriteString("replace_peers=true\n")
	for _, p := range c.Peers {
		p.writeUAPI(&b, endpoint(p.Endpoint))
	}
	return b.String()
}

// writeUAPI writes the peer section; replace_allowed_ips makes it
// idempotent when the peer already exists.
func (p PeerConfig) writeUAPI(b *strings.Builder, endpoint string) {
	fmt.Fprintf(b, "public_key=%s\n", p.PublicKey.hex())
	if endpoint != "" {
		fmt.Fprintf(b, "endpoint=%s\n", endpoint)
	}
	fmt.Fprintf(b, "persistent_keepalive_interval=%d\n", int(p.PersistentKeepalive/time.Second))
	b.WriteString("replace_allowed_ips=true\n")
	for _, pfx := range p.AllowedIPs {
		fmt.Fprintf(b, "allowed_ip=%s\n", pfx)
	}
}
