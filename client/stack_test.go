package client_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/tunnel"
)

// TestNetstackModeUsesInjectedStack: netstack mode builds its stack with
// Config.NewStack (and only with it), hands it what the config says,
// returns it from Netstack, and closes it with the client; a factory's
// failure fails Start.
func TestNetstackModeUsesInjectedStack(t *testing.T) {
	cfg := netstackConfig(t)
	cfg.NewStack = nil
	if _, err := client.Start(cfg); err == nil || !strings.Contains(err.Error(), "NewStack") {
		t.Errorf("Start without NewStack: got %v, want an error naming NewStack", err)
	}

	var got client.StackConfig
	st := &fakeStack{}
	cfg.NewStack = func(sc client.StackConfig) (tun.Device, client.Stack, error) {
		got = sc
		return tuntest.NewChannelTUN().TUN(), st, nil
	}
	c, err := client.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := (client.StackConfig{Addr: cfg.Addr.Addr(), MTU: 1420, Log: got.Log}); got != want || got.Log == nil {
		t.Errorf("StackConfig: got %+v, want %+v with a logger", got, want)
	}
	if c.Netstack() != client.Stack(st) {
		t.Errorf("Netstack: got %v, want the injected stack", c.Netstack())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if st.closed != 1 {
		t.Errorf("stack closed %d times by Client.Close, want 1", st.closed)
	}

	boom := errors.New("boom")
	cfg.NewStack = func(client.StackConfig) (tun.Device, client.Stack, error) { return nil, nil, boom }
	if _, err := client.Start(cfg); !errors.Is(err, boom) {
		t.Errorf("Start with a failing factory: got %v, want %v", err, boom)
	}
}

// TestTUNModeHasNoStack: Netstack is nil in TUN mode (checked without
// creating a TUN: only the zero Client).
func TestTUNModeHasNoStack(t *testing.T) {
	if s := (&client.Client{}).Netstack(); s != nil {
		t.Errorf("Netstack of a client without a stack: got %v, want nil", s)
	}
}

func netstackConfig(t *testing.T) client.Config {
	t.Helper()
	priv, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	gw, err := tunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return client.Config{
		PrivateKey: priv, GatewayKey: gw.PublicKey(),
		Addr:   netip.MustParsePrefix("100.96.0.2/32"),
		Routes: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		Mode:   client.ModeNetstack, Transport: client.TransportStream,
		StreamDial: func(ctx context.Context) (net.Conn, error) {
			return nil, errors.New("no gateway in this test")
		},
	}
}

// fakeStack is a Stack that counts its closes.
type fakeStack struct{ closed int }

func (*fakeStack) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}
func (*fakeStack) ListenTCP(uint16) (net.Listener, error) { return nil, errors.ErrUnsupported }
func (*fakeStack) Ping(context.Context, netip.Addr) (time.Duration, error) {
	return 0, errors.ErrUnsupported
}
func (s *fakeStack) Close() error { s.closed++; return nil }
