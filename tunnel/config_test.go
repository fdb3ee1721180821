package tunnel

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

func TestConfigValidate(t *testing.T) {
	priv := testKey(0x10)
	peer := PeerConfig{PublicKey: testKey(0x20), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	with := func(f func(*Config)) Config {
		c := Config{PrivateKey: priv, Peers: []PeerConfig{peer, {PublicKey: testKey(0x30)}}}
		f(&c)
		return c
	}
	tests := []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"valid", with(func(*Config) {}), ""},
		{"no private key", with(func(c *Config) { c.PrivateKey = Key{} }), "private_key: must be set"},
		{"port", with(func(c *Config) { c.ListenPort = 70000 }), "listen_port: 70000 out of range"},
		{"zero peer key", with(func(c *Config) { c.Peers[1].PublicKey = Key{} }), "peers[1].public_key: must be set"},
		{"duplicate", with(func(c *Config) { c.Peers[1].PublicKey = peer.PublicKey }), "peers[1].public_key: duplicates peers[0]"},
		{"own key", with(func(c *Config) { c.Peers[0].PublicKey = priv.PublicKey() }), "peers[0].public_key: is this device's own"},
		{"host bits", with(func(c *Config) { c.Peers[1].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")} }),
			"peers[1].allowed_ips[0]: 10.1.2.3/8 has host bits set"},
		{"invalid prefix", with(func(c *Config) { c.Peers[1].AllowedIPs = []netip.Prefix{{}} }), "peers[1].allowed_ips[0]: invalid prefix"},
		{"endpoint no port", with(func(c *Config) { c.Peers[0].Endpoint = "gw.example" }), "peers[0].endpoint:"},
		{"endpoint port 0", with(func(c *Config) { c.Peers[0].Endpoint = "gw.example:0" }), "port must be 1-65535"},
		{"keepalive fraction", with(func(c *Config) { c.Peers[0].PersistentKeepalive = 1500 * time.Millisecond }), "peers[0].persistent_keepalive:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate: got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigUAPI(t *testing.T) {
	h := func(b byte) string {
		return strings.Repeat(string("0123456789abcdef"[b>>4])+string("0123456789abcdef"[b&15]), 32)
	}
	cfg := Config{
		PrivateKey: testKey(0x11),
		ListenPort: 51820,
		Peers: []PeerConfig{
			{PublicKey: testKey(0x22), Endpoint: "192.0.2.1:51820", PersistentKeepalive: 25 * time.Second,
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/64")}},
			{PublicKey: testKey(0x33)},
		},
	}
	want := "private_key=" + h(0x11) + "\n" +
		"listen_port=51820\n" +
		"replace_peers=true\n" +
		"public_key=" + h(0x22) + "\n" +
		"endpoint=192.0.2.1:51820\n" +
		"persistent_keepalive_interval=25\n" +
		"replace_allowed_ips=true\n" +
		"allowed_ip=10.96.0.0/12\n" +
		"allowed_ip=fd00::/64\n" +
		"public_key=" + h(0x33) + "\n" +
		"persistent_keepalive_interval=0\n" +
		"replace_allowed_ips=true\n"
	if diff := cmp.Diff(want, cfg.UAPI()); diff != "" {
		t.Errorf("UAPI mismatch (-want +got):\n%s", diff)
	}
}

func TestParseStatus(t *testing.T) {
	in := "private_key=" + strings.Repeat("11", 32) + "\nlisten_port=1\n" +
		"public_key=" + strings.Repeat("22", 32) + "\nendpoint=stream\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n" +
		"tx_bytes=10\nrx_bytes=20\nallowed_ip=10.0.0.0/8\n" +
		"public_key=" + strings.Repeat("33", 32) + "\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
	got, err := parseStatus(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []PeerStatus{
		{PublicKey: testKey(0x22), Endpoint: "stream", LastHandshake: time.Unix(1700000000, 5), TxBytes: 10, RxBytes: 20,
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{PublicKey: testKey(0x33)},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("parseStatus mismatch (-want +got):\n%s", diff)
	}
	if _, err := parseStatus("public_key=zz\n"); err == nil {
		t.Error("parseStatus(bad key): got nil error, want one")
	}
}
