package session

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func TestParseServiceForward(t *testing.T) {
	for _, tc := range []struct {
		spec, name, port string
		local            int
		err              string
	}{
		{"stats", "stats", "", 0, ""},
		{"stats:http", "stats", "http", 0, ""},
		{"stats:80=18081", "stats", "80", 18081, ""},
		{"stats=18081", "stats", "", 18081, ""},
		{"stats=0", "", "", 0, "local port"},
		{"stats=http", "", "", 0, "local port"},
		{"stats.other", "", "", 0, "SVC[:PORT]"},
		{"", "", "", 0, "SVC[:PORT]"},
	} {
		name, port, local, err := parseServiceForward(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: got %v, want error containing %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || name != tc.name || port != tc.port || local != tc.local {
			t.Errorf("%q: got (%q, %q, %d, %v), want (%q, %q, %d)", tc.spec, name, port, local, err, tc.name, tc.port, tc.local)
		}
	}
}

func TestRunEnvPointsServicesAtForwards(t *testing.T) {
	env := RunEnv(Status{HTTPProxy: "127.0.0.1:3128", Forwards: []Forward{{Service: "stats-db", Port: 5432, Local: "127.0.0.2:15432", Remote: "10.96.0.3:5432"}}})
	joined := strings.Join(env, "\n")
	for _, want := range []string{"GRPC_DNS_RESOLVER=native", "HTTP_PROXY=http://127.0.0.1:3128", "STATS_DB_SERVICE_HOST=127.0.0.2", "STATS_DB_SERVICE_PORT=15432", "STATS_DB_PORT_5432_TCP_ADDR=127.0.0.2"} {
		if !strings.Contains(joined, want+"\n") && !strings.HasSuffix(joined, want) {
			t.Errorf("RunEnv: missing %s in\n%s", want, joined)
		}
	}
}

func TestRunEnvProtocols(t *testing.T) {
	dnsUDP := Forward{Service: "kube-dns", Port: 53, Protocol: "udp", Local: "127.0.0.3:10053", Remote: "10.96.0.10:53"}
	dnsTCP := Forward{Service: "kube-dns", Port: 53, Protocol: "tcp", Local: "127.0.0.3:10053", Remote: "10.96.0.10:53"}
	metrics := Forward{Service: "kube-dns", Port: 9153, Local: "127.0.0.3:9153", Remote: "10.96.0.10:9153"} // "" = tcp
	for _, tc := range []struct {
		name     string
		forwards []Forward
		want     []string
	}{
		{"first port udp", []Forward{dnsUDP, dnsTCP, metrics}, []string{
			"KUBE_DNS_SERVICE_HOST=127.0.0.3",
			"KUBE_DNS_SERVICE_PORT=10053",
			"KUBE_DNS_PORT=udp://127.0.0.3:10053",
			"KUBE_DNS_PORT_53_UDP=udp://127.0.0.3:10053",
			"KUBE_DNS_PORT_53_UDP_PROTO=udp",
			"KUBE_DNS_PORT_53_UDP_PORT=10053",
			"KUBE_DNS_PORT_53_UDP_ADDR=127.0.0.3",
			"KUBE_DNS_PORT_53_TCP=tcp://127.0.0.3:10053",
			"KUBE_DNS_PORT_53_TCP_PROTO=tcp",
			"KUBE_DNS_PORT_53_TCP_PORT=10053",
			"KUBE_DNS_PORT_53_TCP_ADDR=127.0.0.3",
			"KUBE_DNS_PORT_9153_TCP=tcp://127.0.0.3:9153",
			"KUBE_DNS_PORT_9153_TCP_PROTO=tcp",
			"KUBE_DNS_PORT_9153_TCP_PORT=9153",
			"KUBE_DNS_PORT_9153_TCP_ADDR=127.0.0.3",
		}},
		{"first port tcp", []Forward{metrics, dnsUDP}, []string{
			"KUBE_DNS_SERVICE_HOST=127.0.0.3",
			"KUBE_DNS_SERVICE_PORT=9153",
			"KUBE_DNS_PORT=tcp://127.0.0.3:9153",
			"KUBE_DNS_PORT_9153_TCP=tcp://127.0.0.3:9153",
			"KUBE_DNS_PORT_9153_TCP_PROTO=tcp",
			"KUBE_DNS_PORT_9153_TCP_PORT=9153",
			"KUBE_DNS_PORT_9153_TCP_ADDR=127.0.0.3",
			"KUBE_DNS_PORT_53_UDP=udp://127.0.0.3:10053",
			"KUBE_DNS_PORT_53_UDP_PROTO=udp",
			"KUBE_DNS_PORT_53_UDP_PORT=10053",
			"KUBE_DNS_PORT_53_UDP_ADDR=127.0.0.3",
		}},
		{"address forwards get none", []Forward{{Protocol: "udp", Local: "127.0.0.1:5353", Remote: "10.96.0.10:53"}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, e := range RunEnv(Status{Forwards: tc.forwards}) {
				if strings.HasPrefix(e, "KUBE_DNS_") {
					got = append(got, e)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("RunEnv:\ngot  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// fakeNet stands in for the netstack client's listeners: it records which
// local addresses are bound, refuses a second bind of one (EADDRINUSE) and
// fails the binds the test names.
type fakeNet struct {
	mu   sync.Mutex
	open map[string]string // "tcp 127.0.0.2:80" → remote
	fail map[string]error  // "tcp 127.0.0.2:80" → bind error
}

func newFakeNet() *fakeNet { return &fakeNet{open: map[string]string{}, fail: map[string]error{}} }

func (n *fakeNet) listen(_ context.Context, network, local, remote string) (net.Addr, io.Closer, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	key := network + " " + local
	bindErr := n.fail[key]
	if _, busy := n.open[key]; busy {
		bindErr = syscall.EADDRINUSE
	}
	if bindErr != nil {
		return nil, nil, fmt.Errorf("forward %s: listen %s %s: bind: %w", local, network, local, bindErr)
	}
	host, port, _ := net.SplitHostPort(local)
	p, _ := strconv.Atoi(port)
	if p == 0 {
		p = 40000 + len(n.open) // an ephemeral port
		local = net.JoinHostPort(host, strconv.Itoa(p))
		key = network + " " + local
	}
	n.open[key] = remote
	var once sync.Once
	return fakeAddr{network, local}, closerFunc(func() error {
		once.Do(func() {
			n.mu.Lock()
			delete(n.open, key)
			n.mu.Unlock()
		})
		return nil
	}), nil
}

// bound returns the bound addresses as "tcp 127.0.0.2:80>10.96.0.3:80", sorted.
func (n *fakeNet) bound() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for k, remote := range n.open {
		out = append(out, k+">"+remote)
	}
	slices.Sort(out)
	return out
}

type fakeAddr struct{ network, addr string }

func (a fakeAddr) Network() string { return a.network }
func (a fakeAddr) String() string  { return a.addr }

// testForwards is a forward set over a fake clientset holding objs, in
// namespace "app", that opens listeners with listen.
func testForwards(t *testing.T, specs []string, all bool, listen listenFunc, objs ...runtime.Object) (*forwardSet, *fake.Clientset) {
	t.Helper()
	cs := fake.NewClientset(objs...)
	return newForwardSet(forwardConfig{Listen: listen, Client: cs, Namespace: "app", Specs: specs, All: all, Log: testkit.Logger(t)}), cs
}

type port struct {
	n     int32
	proto corev1.Protocol
	name  string
}

func service(name, clusterIP string, ports ...port) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "app"}, Spec: corev1.ServiceSpec{ClusterIP: clusterIP}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: p.name, Port: p.n, Protocol: p.proto})
	}
	return s
}

func renderForwards(fs []Forward) []string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s %d/%s %s>%s", f.Service, f.Port, f.Protocol, f.Local, f.Remote))
	}
	return out
}

// TestForwardSpecs covers --forward: which listeners a spec opens, and the
// one-line errors (with nothing left open after one).
func TestForwardSpecs(t *testing.T) {
	objs := []runtime.Object{
		service("stats", "10.96.0.3", port{80, corev1.ProtocolTCP, "http"}),
		service("kube-dns", "10.96.0.10", port{53, corev1.ProtocolUDP, "dns"}, port{53, corev1.ProtocolTCP, "dns-tcp"}, port{9153, "", "metrics"}),
		service("headless", corev1.ClusterIPNone, port{80, "", ""}),
		service("sctp", "10.96.0.11", port{9, corev1.ProtocolSCTP, ""}),
	}
	for _, tc := range []struct {
		name  string
		specs []string
		fail  map[string]error
		want  []string // Forwards; the fake's bound addresses must match
		err   []string // substrings of the error
	}{
		{name: "tcp service", specs: []string{"stats"}, want: []string{"stats 80/tcp 127.0.0.2:80>10.96.0.3:80"}},
		{name: "tcp and udp ports", specs: []string{"kube-dns"}, want: []string{
			"kube-dns 53/udp 127.0.0.2:53>10.96.0.10:53",
			"kube-dns 53/tcp 127.0.0.2:53>10.96.0.10:53",
			"kube-dns 9153/tcp 127.0.0.2:9153>10.96.0.10:9153",
		}},
		{name: "port number picks both protocols", specs: []string{"kube-dns:53=10053"}, want: []string{
			"kube-dns 53/udp 127.0.0.2:10053>10.96.0.10:53",
			"kube-dns 53/tcp 127.0.0.2:10053>10.96.0.10:53",
		}},
		{name: "port name", specs: []string{"kube-dns:dns"}, want: []string{"kube-dns 53/udp 127.0.0.2:53>10.96.0.10:53"}},
		{name: "services get their own address", specs: []string{"stats", "kube-dns:metrics", "stats:http=8080"}, want: []string{
			"stats 80/tcp 127.0.0.2:80>10.96.0.3:80",
			"kube-dns 9153/tcp 127.0.0.3:9153>10.96.0.10:9153",
			"stats 80/tcp 127.0.0.2:8080>10.96.0.3:80",
		}},
		{name: "address forwards", specs: []string{"127.0.0.1:8080=10.96.0.20:80", "udp:127.0.0.1:5353=10.96.0.10:53", "tcp:127.0.0.1:0=10.96.0.10:53"}, want: []string{
			" 0/tcp 127.0.0.1:8080>10.96.0.20:80",
			" 0/udp 127.0.0.1:5353>10.96.0.10:53",
			" 0/tcp 127.0.0.1:40002>10.96.0.10:53",
		}},
		{name: "missing service", specs: []string{"stats", "nope"}, err: []string{`--forward nope: service "nope" in "app"`, "not found"}},
		{name: "headless", specs: []string{"headless"}, err: []string{"no ClusterIP (headless)"}},
		{name: "no such port", specs: []string{"stats:9999"}, err: []string{`service "stats" has no TCP or UDP port "9999"`}},
		{name: "sctp only", specs: []string{"sctp"}, err: []string{`service "sctp" has no TCP or UDP ports`}},
		{name: "port in use", specs: []string{"kube-dns", "stats"}, fail: map[string]error{"tcp 127.0.0.3:80": syscall.EADDRINUSE},
			err: []string{"--forward stats: 127.0.0.3:80 (tcp) is already in use: pick another LOCALPORT, e.g. stats:80=10080"}},
		{name: "udp port in use", specs: []string{"kube-dns"}, fail: map[string]error{"udp 127.0.0.2:53": syscall.EADDRINUSE},
			err: []string{"127.0.0.2:53 (udp) is already in use"}},
		{name: "same port twice", specs: []string{"stats", "stats"}, err: []string{"127.0.0.2:80 (tcp) is already in use"}},
		{name: "address in use", specs: []string{"udp:127.0.0.1:5353=10.96.0.10:53"}, fail: map[string]error{"udp 127.0.0.1:5353": syscall.EADDRINUSE},
			err: []string{"--forward udp:127.0.0.1:5353=10.96.0.10:53: 127.0.0.1:5353 (udp) is already in use: pick another local port"}},
		{name: "low port without root", specs: []string{"stats"}, fail: map[string]error{"tcp 127.0.0.2:80": syscall.EACCES},
			err: []string{"ports below 1024 need root; add =LOCALPORT, e.g. stats:80=10080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newFakeNet()
			for k, v := range tc.fail {
				n.fail[k] = v
			}
			fs, _ := testForwards(t, tc.specs, false, n.listen, objs...)
			err := fs.Open(t.Context())
			if tc.err != nil {
				if err == nil {
					t.Fatalf("got no error, want one containing %q", tc.err)
				}
				for _, want := range tc.err {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("got error %q, want it to contain %q", err, want)
					}
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("got a multi-line error %q, want one line", err)
				}
				if got := n.bound(); len(got) != 0 {
					t.Errorf("after the error: got %v still bound, want nothing", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer fs.Close()
			got := renderForwards(fs.list())
			if !slices.Equal(got, tc.want) {
				t.Errorf("forwards:\ngot  %q\nwant %q", got, tc.want)
			}
			if bound := n.bound(); len(bound) != len(tc.want) {
				t.Errorf("bound: got %q, want one per forward", bound)
			}
			fs.Close()
			if got := n.bound(); len(got) != 0 {
				t.Errorf("after stop: got %v still bound, want nothing", got)
			}
		})
	}
}

// TestForwardsNeedNetstack: without a netstack listener (TUN mode) a
// forward is refused in one line naming --netstack.
func TestForwardsNeedNetstack(t *testing.T) {
	for _, tc := range []struct {
		specs []string
		all   bool
	}{{specs: []string{"stats"}}, {all: true}} {
		fs, _ := testForwards(t, tc.specs, tc.all, nil)
		err := fs.Open(t.Context())
		if err == nil || !strings.Contains(err.Error(), "need --netstack") {
			t.Errorf("%+v in TUN mode: got %v, want an error naming --netstack", tc, err)
		}
	}
}
