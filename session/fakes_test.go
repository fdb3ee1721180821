package session

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/tunnel"
)

// fakeGateway is the gateway's control API on loopback, per pod: calls are
// recorded, answers come from the handler funcs. A pod whose name is in
// down refuses connections, as a deleted pod's port-forward does.
type fakeGateway struct {
	t   *testing.T
	ln  net.Listener
	mu  sync.Mutex
	reg api.RegisterResponse
	// calls are "POD METHOD PATH" lines, in order.
	calls []string
	down  map[string]bool
	// renewUnknown are ids the renew call reports as forgotten.
	renewUnknown []string
	// addStatus, when set, answers AddIntercept with that status.
	addStatus int
	live      []api.Intercept
	// unknownPeer: renewals say the gateway forgot this workstation.
	unknownPeer bool
	// dials counts dialPod calls per pod, refused ones too.
	dials map[string]int
	// patcher, when set, patches and restores workloads as the real
	// gateway does (cluster.GatewayPatcher over the test's cluster).
	patcher *cluster.GatewayPatcher
}

// patchAs makes g patch and restore workloads in cs's namespace ns as
// the real gateway does, with its Deployment and relay Service added.
func (g *fakeGateway) patchAs(cs *fake.Clientset, ns string) {
	_, _ = cs.AppsV1().Deployments(ns).Create(context.Background(), &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: cluster.GatewayName, Namespace: ns},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: cluster.GatewayContainer, Image: "bridgetun-agent:test", ImagePullPolicy: corev1.PullNever},
		}}}},
	}, metav1.CreateOptions{})
	_, _ = cs.CoreV1().Services(ns).Create(context.Background(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: cluster.RelayName, Namespace: ns},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.99"},
	}, metav1.CreateOptions{})
	g.mu.Lock()
	g.patcher = &cluster.GatewayPatcher{Client: cs, Namespace: ns}
	g.mu.Unlock()
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{t: t, ln: ln, down: map[string]bool{}, dials: map[string]int{}, reg: api.RegisterResponse{
		Address: "198.19.0.7/32", GatewayPublicKey: "k", GatewayAddress: "198.19.0.1",
		ClusterDomain: "cluster.local", Version: "test", TTLSeconds: 60,
	}}
	srv := &http.Server{Handler: http.HandlerFunc(g.serve), ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, podKey{}, c.(*podConn).pod)
	}}
	pl := &podListener{Listener: ln}
	g.ln = pl
	go func() { _ = srv.Serve(pl) }()
	t.Cleanup(func() { _ = srv.Close() })
	return g
}

type podKey struct{}

// podConn is a connection that says which pod it was dialled for.
type podConn struct {
	net.Conn
	pod string
}

// podListener hands the server the connections dialPod made.
type podListener struct{ net.Listener }

func (l *podListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// The dialler writes the pod name as its first line.
	var b [64]byte
	n := 0
	for n < len(b) {
		if _, err := c.Read(b[n : n+1]); err != nil {
			c.Close()
			return nil, err
		}
		if b[n] == '\n' {
			break
		}
		n++
	}
	return &podConn{Conn: c, pod: string(b[:n])}, nil
}

// dialPod is a linkConfig.DialPod into the fake.
func (g *fakeGateway) dialPod(ctx context.Context, pod string, port int) (net.Conn, error) {
	g.mu.Lock()
	down := g.down[pod]
	g.dials[pod]++
	g.mu.Unlock()
	if down {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errPodGone}
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", g.ln.Addr().String())
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte(pod + "\n")); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

var errPodGone = &net.AddrError{Err: "pod is gone", Addr: "gateway"}

func (g *fakeGateway) setDown(pod string, down bool) {
	g.mu.Lock()
	g.down[pod] = down
	g.mu.Unlock()
}

func (g *fakeGateway) recorded() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.calls...)
}

func (g *fakeGateway) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.calls = append(g.calls, r.Context().Value(podKey{}).(string)+" "+r.Method+" "+r.URL.Path)
	reg, unknown, addStatus, live, unknownPeer, patcher := g.reg, g.renewUnknown, g.addStatus, g.live, g.unknownPeer, g.patcher
	g.mu.Unlock()
	switch r.Method + " " + r.URL.Path {
	case "POST /v1/register":
		_ = json.NewEncoder(w).Encode(reg)
	case "POST /v1/intercepts":
		if addStatus != 0 {
			http.Error(w, "api is intercepted by bob@laptop", addStatus)
			return
		}
		var req api.InterceptRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		it := api.Intercept{InterceptRequest: req, ID: "id-" + req.Service, Target: "198.19.0.7:8080"}
		if patcher != nil {
			t, err := patcher.Resolve(r.Context(), req.Namespace, req.Service, req.ServicePort)
			if err == nil {
				it.Workload = api.Workload{Namespace: t.Namespace, Kind: t.Kind, Name: t.Name}
				grace := api.DefaultGrace
				if req.GraceSeconds > 0 {
					grace = time.Duration(req.GraceSeconds) * time.Second
				}
				it.Patched, err = patcher.Patch(r.Context(), t, grace, req.PublicKey)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusUnprocessableEntity)
				return
			}
		}
		_ = json.NewEncoder(w).Encode(it)
	case "POST /v1/workloads/restore":
		var req api.RestoreRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		var rr api.RestoreResponse
		if patcher != nil {
			var err error
			rr.Restored, err = patcher.Restore(r.Context(), cluster.WorkloadRef{Namespace: req.Workload.Namespace, Kind: req.Workload.Kind, Name: req.Workload.Name})
			if err != nil {
				http.Error(w, err.Error(), http.StatusUnprocessableEntity)
				return
			}
		}
		_ = json.NewEncoder(w).Encode(rr)
	case "POST /v1/intercepts/renew":
		_ = json.NewEncoder(w).Encode(api.RenewResponse{Unknown: unknown, TTLSeconds: 15, UnknownPeer: unknownPeer})
	case "DELETE /v1/intercepts":
		_ = json.NewEncoder(w).Encode(api.LeaveResponse{Removed: true})
	case "GET /v1/intercepts":
		_ = json.NewEncoder(w).Encode(live)
	default:
		http.NotFound(w, r)
	}
}

// gatewayCluster is a fake cluster whose gateway Deployment has the given
// pods, all Running and Ready.
func gatewayCluster(ns string, pods ...string) *fake.Clientset {
	cs := fake.NewClientset(&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: cluster.GatewayName, Namespace: ns, UID: "gw"}})
	for _, p := range pods {
		addGatewayPod(cs, ns, p)
	}
	return cs
}

func addGatewayPod(cs *fake.Clientset, ns, name string) {
	_, _ = cs.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{cluster.LabelName: cluster.GatewayName}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}, metav1.CreateOptions{})
}

func deleteGatewayPod(cs *fake.Clientset, ns, name string) {
	_ = cs.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// closedPort is a loopback port nothing listens on (it was just freed).
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func itoa(n int) string { return strconv.Itoa(n) }

func equalTemplates(a, b corev1.PodTemplateSpec) bool { return apiequality.Semantic.DeepEqual(a, b) }

// closeRecorder is a listener that says whether it was closed.
type closeRecorder struct {
	net.Listener
	mu   sync.Mutex
	done bool
}

func (c *closeRecorder) Close() error {
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	return c.Listener.Close()
}

func (c *closeRecorder) closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func newRawRequest(ctx context.Context, method, url, body string) (*http.Request, error) {
	return http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
}

var errStop = errors.New("stop here")

// registration is a gateway's answer with valid keys and addresses.
func registration() api.RegisterResponse {
	k, _ := tunnel.GenerateKey()
	return api.RegisterResponse{Address: "198.19.0.7/32", GatewayPublicKey: k.PublicKey().String(), GatewayAddress: "198.19.0.1", ClusterDomain: "cluster.local"}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
