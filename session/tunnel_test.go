package session

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/client"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/tunnel"
)

// TestUDPEndpoint: --gateway-endpoint wins; else the gateway pod's node
// address and the Service's NodePort; else a one-line hint.
func TestUDPEndpoint(t *testing.T) {
	nodePort := func(port int32) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: cluster.GatewayName, Namespace: "app"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 51820, NodePort: port}}}}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "gw-1", Namespace: "app"}, Status: corev1.PodStatus{HostIP: "10.88.0.1"}}
	for _, tc := range []struct {
		name, endpoint string
		cs             *fake.Clientset
		want, err      string
	}{
		{name: "flag", endpoint: "203.0.113.5:4000", cs: fake.NewClientset(), want: "203.0.113.5:4000"},
		{name: "node port", cs: fake.NewClientset(nodePort(31820), pod), want: "10.88.0.1:31820"},
		{name: "no node port", cs: fake.NewClientset(nodePort(0), pod), err: "no UDP endpoint: pass --gateway-endpoint HOST:PORT or --expose nodeport"},
		{name: "no service", cs: fake.NewClientset(pod), err: "no UDP endpoint"},
		{name: "pod unknown", cs: fake.NewClientset(nodePort(31820)), err: "gateway pod's node address unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := udpEndpoint(t.Context(), tunnelConfig{Client: tc.cs, Namespace: "app", Pod: func() string { return "gw-1" }, GatewayEndpoint: tc.endpoint})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestStartTunnelTransports: an unknown --transport is refused before
// anything starts; auto without a UDP endpoint goes straight to the stream.
func TestStartTunnelTransports(t *testing.T) {
	started := []client.Transport{}
	cfg := tunnelConfig{Client: fake.NewClientset(), Namespace: "app", Pod: func() string { return "gw-1" },
		Reg: registration(),
		Start: func(c client.Config) (*client.Client, error) {
			started = append(started, c.Transport)
			return nil, errStop
		},
		Progress: func(string, ...any) {}}
	cfg.Transport = "carrier-pigeon"
	if _, _, err := startTunnel(t.Context(), cfg); err == nil || err.Error() != `--transport "carrier-pigeon": want auto, stream or udp` {
		t.Errorf("got %v, want the one-line refusal", err)
	}
	if len(started) != 0 {
		t.Errorf("started %v for a bad transport, want nothing", started)
	}
	cfg.Transport = ""
	if _, _, err := startTunnel(t.Context(), cfg); err != errStop {
		t.Errorf("got %v, want the Start seam's error", err)
	}
	if len(started) != 1 || started[0] != client.TransportStream {
		t.Errorf("auto without an endpoint started %v, want [stream]", started)
	}
}

// TestStartTunnelAutoWithEndpoint: auto with a UDP endpoint starts one
// client on the switching transport, with the endpoint, the stream dialer
// and the UDP-sized MTU (it may carry UDP); udp and stream keep their own.
func TestStartTunnelAutoWithEndpoint(t *testing.T) {
	dial := func(context.Context) (net.Conn, error) { return nil, errors.New("unused") }
	for _, tc := range []struct {
		transport string
		want      client.Transport
		endpoint  string
		dial      bool
		mtu       int
	}{
		{"auto", client.TransportAuto, "203.0.113.5:4000", true, 0},
		{"", client.TransportAuto, "203.0.113.5:4000", true, 0},
		{"udp", client.TransportUDP, "203.0.113.5:4000", false, 0},
		{"stream", client.TransportStream, "", true, tunnel.StreamMTU},
	} {
		t.Run(tc.transport, func(t *testing.T) {
			var got []client.Config
			cfg := tunnelConfig{Client: fake.NewClientset(), Namespace: "app", Pod: func() string { return "gw-1" },
				Reg: registration(), Transport: tc.transport, GatewayEndpoint: "203.0.113.5:4000", StreamDial: dial,
				Start: func(c client.Config) (*client.Client, error) {
					got = append(got, c)
					return nil, errStop
				},
				Progress: func(string, ...any) {}}
			if _, _, err := startTunnel(t.Context(), cfg); err != errStop {
				t.Fatalf("got %v, want the Start seam's error", err)
			}
			if len(got) != 1 {
				t.Fatalf("started %d clients, want 1 (no second try on another transport)", len(got))
			}
			c := got[0]
			if c.Transport != tc.want || c.GatewayEndpoint != tc.endpoint || (c.StreamDial != nil) != tc.dial || c.MTU != tc.mtu {
				t.Errorf("got transport %q endpoint %q dial %v mtu %d; want %q %q %v %d",
					c.Transport, c.GatewayEndpoint, c.StreamDial != nil, c.MTU, tc.want, tc.endpoint, tc.dial, tc.mtu)
			}
		})
	}
}
