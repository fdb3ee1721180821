package tunnel

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// DeviceConfig holds what NewDevice needs. The Device takes ownership of
// TUN and Bind: Close closes both.
type DeviceConfig struct {
	TUN        tun.Device
	Bind       conn.Bind
	Config     Config
	Log        *slog.Logger          // nil discards
	Registerer prometheus.Registerer // nil = no metrics
	// MaxInbound bounds the data packets received and not yet written to
	// the TUN (inboundLimit says why); 0 = unbounded. For a device with one
	// peer: the wait holds up every peer's receiving alike.
	MaxInbound int
	// CompactBuffers has wireguard-go copy each queued packet that fits
	// 2 KiB out of its 64 KiB read buffer (our fork, third_party/
	// wireguard-go/BRIDGETUN.md), so what a device holds costs what the
	// packets weigh. Outbound (read from the TUN) always; inbound only when
	// the TUN copies what it is given (a netstack link endpoint): the Linux
	// TUN's GRO coalesces into the spare capacity of the first buffer.
	CompactBuffers Compaction
}

// Compaction says which of a device's packet queues use compact buffers.
type Compaction int

const (
	CompactNone     Compaction = iota // wireguard-go's 64 KiB per packet
	CompactOutbound                   // packets read from the TUN
	CompactBoth                       // and packets received from peers
)

// Device is a running wireguard-go device with bridgetun's configuration,
// logging and metrics around it.
type Device struct {
	wg   *device.Device
	bind conn.Bind // the caller's bind, unwrapped
	log  *slog.Logger
	m    *metrics

	mu     sync.Mutex
	closed bool

	stopMonitor context.CancelFunc // nil unless the bind is a pathMonitor
	monitorDone chan struct{}
}

// endpointRewriter is implemented by binds whose endpoints are not UDP
// addresses: the stream client always sends into its one stream, the
// server only learns endpoints from the streams peers dial in on.
type endpointRewriter interface {
	peerEndpoint(configured string) string
}

// shutdowner is implemented by binds that own resources beyond Close,
// which wireguard-go also calls on every bind update (StreamServerBind's
// listener).
type shutdowner interface {
	Shutdown() error
}

// NewDevice validates cfg, builds the wireguard-go device, configures it and
// brings it up. If validation fails, cfg.TUN and cfg.Bind are untouched; a
// later failure closes them and leaves nothing running.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	if cfg.TUN == nil || cfg.Bind == nil {
		return nil, errors.New("new device: TUN and Bind must be set")
	}
	if err := cfg.Config.Validate(); err != nil {
		return nil, fmt.Errorf("new device: invalid config: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("new device: %w", err)
	}
	log := obs.Component(discardLogger(cfg.Log), "tunnel")
	d := &Device{bind: cfg.Bind, log: log, m: m}
	td, mb := cfg.TUN, &metricsBind{Bind: cfg.Bind, m: m}
	if cfg.MaxInbound > 0 {
		mb.limit = newInboundLimit(cfg.MaxInbound)
		td = limitedTUN{Device: td, limit: mb.limit}
	}
	d.wg = device.NewDevice(td, mb, newWGLogger(obs.Component(log, "wireguard"), m))
	d.wg.SetCompactBuffers(cfg.CompactBuffers >= CompactOutbound, cfg.CompactBuffers == CompactBoth)
	d.wg.SetInlineLonePackets(inlineLoneFromEnv())
	uapi, err := d.uapi(cfg.Config)
	if err == nil {
		err = d.wg.IpcSet(uapi)
	}
	if err == nil {
		err = d.wg.Up()
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("new device: configure: %w", err)
	}
	if pm, ok := cfg.Bind.(pathMonitor); ok {
		ctx, cancel := context.WithCancel(context.Background())
		d.stopMonitor, d.monitorDone = cancel, make(chan struct{})
		go func() {
			defer close(d.monitorDone)
			pm.monitor(ctx, d)
		}()
	}
	log.Info("device up", "public_key", cfg.Config.PrivateKey.PublicKey().String(), "peers", len(cfg.Config.Peers))
	return d, nil
}

// inlineLoneFromEnv says whether wireguard-go handles a lone packet in the
// goroutine that read it (our fork, third_party/wireguard-go/BRIDGETUN.md):
// on unless BRIDGETUN_WG_INLINE=0, a benchmark knob for measuring the
// difference in one run.
func inlineLoneFromEnv() bool {
	return os.Getenv("BRIDGETUN_WG_INLINE") != "0"
}

func (d *Device) uapi(c Config) (string, error) {
	var firstErr error
	s := c.uapi(func(ep string) string {
		ep, err := d.endpoint(ep)
		if err != nil && firstErr == nil {
			firstErr = err
		}
		return ep
	})
	return s, firstErr
}

// endpoint adapts a configured endpoint to the bind: streams rewrite it, and
// UDP names are resolved here because wireguard-go only accepts ip:port.
func (d *Device) endpoint(ep string) (string, error) {
	if r, ok := d.bind.(endpointRewriter); ok {
		return r.peerEndpoint(ep), nil
	}
	if ep == "" {
		return "", nil
	}
	if _, err := netip.ParseAddrPort(ep); err == nil {
		return ep, nil
	}
	ua, err := net.ResolveUDPAddr("udp", ep)
	if err != nil {
		return "", fmt.Errorf("resolve endpoint %q: %w", ep, err)
	}
	return ua.AddrPort().String(), nil
}

// AddPeer adds p, or updates it if it exists; other peers and their
// sessions are untouched.
func (d *Device) AddPeer(p PeerConfig) error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("add peer %s: %w", p.PublicKey, err)
	}
	ep, err := d.endpoint(p.Endpoint)
	if err != nil {
		return fmt.Errorf("add peer %s: %w", p.PublicKey, err)
	}
	var b strings.Builder
	p.writeUAPI(&b, ep)
	if err := d.wg.IpcSet(b.String()); err != nil {
		return fmt.Errorf("add peer %s: %w", p.PublicKey, err)
	}
	return nil
}

// Keepalive makes the device send an authenticated keepalive to peer pub
// now, then keep the given persistent-keepalive interval (0 = off). Turning
// persistent keepalive on is the one UAPI operation that sends at once.
func (d *Device) Keepalive(pub Key, interval time.Duration) error {
	secs := int(interval / time.Second)
	on := max(secs, 1)
	uapi := fmt.Sprintf("public_key=%[1]s\nupdate_only=true\npersistent_keepalive_interval=0\n"+
		"public_key=%[1]s\nupdate_only=true\npersistent_keepalive_interval=%[2]d\n", pub.hex(), on)
	if secs == 0 {
		uapi += fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\n", pub.hex())
	}
	if err := d.wg.IpcSet(uapi); err != nil {
		return fmt.Errorf("keepalive to %s: %w", pub, err)
	}
	return nil
}

// handshake implements pathDevice.
func (d *Device) handshake() {
	d.eachPeer(func(p *device.Peer) { _ = p.SendHandshakeInitiation(false) })
}

// keepalive implements pathDevice.
func (d *Device) keepalive() { d.eachPeer((*device.Peer).SendKeepalive) }

func (d *Device) eachPeer(f func(*device.Peer)) {
	st, err := d.Status()
	if err != nil {
		d.log.Debug("list peers", "err", err)
		return
	}
	for _, ps := range st {
		if p := d.wg.LookupPeer(device.NoisePublicKey(ps.PublicKey)); p != nil {
			f(p)
		}
	}
}

// RemovePeer removes the peer with public key pub; removing an unknown peer
// is not an error.
func (d *Device) RemovePeer(pub Key) error {
	if err := d.wg.IpcSet(fmt.Sprintf("public_key=%s\nremove=true\n", pub.hex())); err != nil {
		return fmt.Errorf("remove peer %s: %w", pub, err)
	}
	return nil
}

// PeerStatus is one peer's state as wireguard-go reports it.
type PeerStatus struct {
	PublicKey     Key
	Endpoint      string
	LastHandshake time.Time // zero: never
	RxBytes       uint64
	TxBytes       uint64
	AllowedIPs    []netip.Prefix
}

// Status reports every peer's state.
func (d *Device) Status() ([]PeerStatus, error) {
	s, err := d.wg.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("device status: %w", err)
	}
	peers, err := parseStatus(s)
	if err != nil {
		return nil, fmt.Errorf("device status: %w", err)
	}
	return peers, nil
}

// parseStatus parses wireguard-go IpcGet text.
func parseStatus(s string) ([]PeerStatus, error) {
	var (
		peers      []PeerStatus
		sec, nsec  int64
		cur        *PeerStatus
		lineNumber int
	)
	flush := func() {
		if cur != nil && (sec != 0 || nsec != 0) {
			cur.LastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lineNumber++
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "public_key":
			flush()
			peers = append(peers, PeerStatus{})
			cur = &peers[len(peers)-1]
			var b []byte
			if b, err = hex.DecodeString(val); err == nil && len(b) != len(Key{}) {
				err = fmt.Errorf("key has %d bytes", len(b))
			}
			if err == nil {
				cur.PublicKey = Key(b)
			}
		case "endpoint", "last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes", "allowed_ip":
			if cur == nil {
				return nil, fmt.Errorf("line %d: %s before public_key", lineNumber, key)
			}
			switch key {
			case "endpoint":
				cur.Endpoint = val
			case "last_handshake_time_sec":
				sec, err = strconv.ParseInt(val, 10, 64)
			case "last_handshake_time_nsec":
				nsec, err = strconv.ParseInt(val, 10, 64)
			case "rx_bytes":
				cur.RxBytes, err = strconv.ParseUint(val, 10, 64)
			case "tx_bytes":
				cur.TxBytes, err = strconv.ParseUint(val, 10, 64)
			case "allowed_ip":
				var p netip.Prefix
				if p, err = netip.ParsePrefix(val); err == nil {
					cur.AllowedIPs = append(cur.AllowedIPs, p)
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %s=%q: %w", lineNumber, key, val, err)
		}
	}
	flush()
	return peers, sc.Err()
}

// Close stops the device and closes its TUN and bind, and shuts down a
// bind that owns a listener. It is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.stopMonitor != nil {
		// Before the device closes: the monitor sends through it.
		d.stopMonitor()
		<-d.monitorDone
	}
	d.wg.Close()
	if s, ok := d.bind.(shutdowner); ok {
		if err := s.Shutdown(); err != nil {
			return fmt.Errorf("close device: %w", err)
		}
	}
	d.log.Info("device closed")
	return nil
}

// metricsFor exposes the device's counters to tests in this package.
func (d *Device) metricsFor() *metrics { return d.m }
