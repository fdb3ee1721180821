package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// fakeCluster is the completer's cluster seam: a fake clientset, and the
// options each connect was asked for.
type fakeCluster struct {
	objs []any
	opts []cluster.Options
	err  error
}

func (f *fakeCluster) connect(_ context.Context, o cluster.Options) (*cluster.Conn, error) {
	f.opts = append(f.opts, o)
	if f.err != nil {
		return nil, f.err
	}
	ns := o.Namespace
	if ns == "" {
		ns = "default"
	}
	client := fake.NewClientset()
	for _, o := range f.objs {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = client.CoreV1().Services(o.Namespace).Create(context.Background(), o, metav1.CreateOptions{})
		case *corev1.Namespace:
			_, err = client.CoreV1().Namespaces().Create(context.Background(), o, metav1.CreateOptions{})
		}
		if err != nil {
			return nil, err
		}
	}
	return &cluster.Conn{Client: client, Namespace: ns, Context: o.Context}, nil
}

func svc(ns, name string, labels map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}, Spec: corev1.ServiceSpec{Ports: ports}}
}

// complete runs one completion function the way cobra's __complete does:
// the command that line names, its flags parsed, the positional words as
// args (and the "--" cobra appends first).
func complete(t *testing.T, f func(*completer) cobra.CompletionFunc, c *completer, line ...string) ([]string, cobra.ShellCompDirective) {
	t.Helper()
	root := newRootCmd()
	cmd, rest, err := root.Find(line[:len(line)-1])
	if err != nil {
		t.Fatalf("find %q: %v", line, err)
	}
	if err := cmd.ParseFlags(append(append([]string{}, rest...), "--")); err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatal(err)
	}
	got, dir := f(c)(cmd, cmd.Flags().Args(), line[len(line)-1])
	return got, dir
}

func TestCompleteServices(t *testing.T) {
	objs := []any{
		svc("bt-sample", "api", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}),
		svc("bt-sample", "frontend", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, corev1.ServicePort{Port: 9090, Protocol: corev1.ProtocolTCP}),
		svc("bt-sample", "udp-echo", nil, corev1.ServicePort{Name: "udp", Port: 5353, Protocol: corev1.ProtocolUDP}),
		svc("bt-sample", cluster.GatewayName, map[string]string{cluster.LabelName: cluster.GatewayName}),
		svc("team", "billing", nil),
		svc("default", "kubernetes", nil),
	}
	up := func(context.Context) (session.Status, error) {
		return session.Status{Context: "kind-dev", Namespace: "team"}, nil
	}
	down := func(context.Context) (session.Status, error) { return session.Status{}, session.ErrNotRunning }
	serviceArg := func(c *completer) cobra.CompletionFunc { return c.serviceArg }
	serviceFlag := func(c *completer) cobra.CompletionFunc { return c.serviceFlag }
	for _, tc := range []struct {
		name     string
		f        func(*completer) cobra.CompletionFunc
		status   func(context.Context) (session.Status, error)
		line     []string
		want     []string
		wantDir  cobra.ShellCompDirective
		wantOpts []cluster.Options
	}{
		{
			name: "intercept -n", f: serviceArg, status: down,
			line: []string{"intercept", "--kubeconfig", "/k", "--context", "c", "-n", "bt-sample", ""},
			want: []string{"api\t80/TCP (http)", "frontend\t80/TCP (http), 9090/TCP", "udp-echo\t5353/UDP (udp)"}, wantDir: cobra.ShellCompDirectiveNoFileComp,
			wantOpts: []cluster.Options{{Kubeconfig: "/k", Context: "c", Namespace: "bt-sample"}},
		},
		{
			name: "intercept prefix", f: serviceArg, status: down,
			line: []string{"intercept", "--namespace=bt-sample", "--port", "8080", "fr"},
			want: []string{"frontend\t80/TCP (http), 9090/TCP"}, wantDir: cobra.ShellCompDirectiveNoFileComp,
			wantOpts: []cluster.Options{{Namespace: "bt-sample"}},
		},
		{
			name: "intercept: the session's context and namespace", f: serviceArg, status: up,
			line: []string{"intercept", ""},
			want: []string{"billing"}, wantDir: cobra.ShellCompDirectiveNoFileComp,
			wantOpts: []cluster.Options{{Context: "kind-dev", Namespace: "team"}},
		},
		{
			name: "intercept: the context's namespace without a session", f: serviceArg, status: down,
			line: []string{"intercept", ""},
			want: []string{"kubernetes"}, wantDir: cobra.ShellCompDirectiveNoFileComp,
			wantOpts: []cluster.Options{{}},
		},
		{
			name: "intercept: one SERVICE only", f: serviceArg, status: down,
			line:    []string{"intercept", "-n", "bt-sample", "api", ""},
			wantDir: cobra.ShellCompDirectiveNoFileComp,
		},
		{
			name: "intercept: after -- the shell completes CMD", f: serviceArg, status: down,
			line:    []string{"intercept", "api", "--port", "8080", "--", "go", ""},
			wantDir: cobra.ShellCompDirectiveDefault,
		},
		{
			name: "run --service", f: serviceFlag, status: up,
			line: []string{"run", "-n", "bt-sample", "--service", "u"},
			want: []string{"udp-echo\t5353/UDP (udp)"}, wantDir: cobra.ShellCompDirectiveNoFileComp,
			wantOpts: []cluster.Options{{Context: "kind-dev", Namespace: "bt-sample"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fakeCluster{objs: objs}
			c := &completer{Connect: fc.connect, Status: tc.status}
			line := tc.line
			if tc.f(c) == nil {
				t.Fatal("no completion function")
			}
			// For run --service, the flag's value is what is completed.
			if line[len(line)-2] == "--service" {
				line = append(line[:len(line)-2:len(line)-2], line[len(line)-1])
			}
			got, dir := complete(t, tc.f, c, line...)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("completions (-want +got):\n%s", diff)
			}
			if dir != tc.wantDir {
				t.Errorf("directive: got %v, want %v", dir, tc.wantDir)
			}
			if diff := cmp.Diff(tc.wantOpts, fc.opts); diff != "" {
				t.Errorf("connect options (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompleteNamespacesAndContexts(t *testing.T) {
	fc := &fakeCluster{objs: []any{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bt-sample"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}},
	}}
	c := &completer{Connect: fc.connect, Status: func(context.Context) (session.Status, error) { return session.Status{}, session.ErrNotRunning }}
	namespaces := func(c *completer) cobra.CompletionFunc { return c.namespaces }
	got, dir := complete(t, namespaces, c, "up", "--context", "kind-dev", "-n", "bt-sample", "")
	if diff := cmp.Diff([]string{"bt-sample", "default", "kube-system"}, got); diff != "" || dir != cobra.ShellCompDirectiveNoFileComp {
		t.Errorf("namespaces (-want +got):\n%s; directive %v", diff, dir)
	}
	// The namespace being typed is no option of the connection.
	if diff := cmp.Diff([]cluster.Options{{Context: "kind-dev"}}, fc.opts); diff != "" {
		t.Errorf("connect options (-want +got):\n%s", diff)
	}
	if got, _ := complete(t, namespaces, c, "up", "kube-"); !cmp.Equal(got, []string{"kube-system"}) {
		t.Errorf("prefix kube-: got %q", got)
	}

	kc := filepath.Join(t.TempDir(), "config")
	writeKubeconfig(t, kc, "https://127.0.0.1:9", "kind-dev", "kind-prod", "minikube")
	contexts := func(c *completer) cobra.CompletionFunc { return c.contexts }
	got, dir = complete(t, contexts, c, "intercept", "--kubeconfig", kc, "kind-")
	if diff := cmp.Diff([]string{"kind-dev\tcluster kind-dev", "kind-prod\tcluster kind-prod"}, got); diff != "" || dir != cobra.ShellCompDirectiveNoFileComp {
		t.Errorf("contexts (-want +got):\n%s; directive %v", diff, dir)
	}
	t.Setenv("KUBECONFIG", kc)
	if got, _ := complete(t, contexts, c, "up", "m"); !cmp.Equal(got, []string{"minikube\tcluster minikube"}) {
		t.Errorf("contexts from $KUBECONFIG: got %q", got)
	}
}

// TestCompleteQuietFailures: an unreachable cluster, a missing
// kubeconfig, no session: no candidates and no file names instead.
func TestCompleteQuietFailures(t *testing.T) {
	fc := &fakeCluster{err: errors.New("context \"x\": API server https://x: unreachable")}
	down := func(context.Context) (session.Status, error) { return session.Status{}, session.ErrNotRunning }
	c := &completer{Connect: fc.connect, Status: down}
	for name, tc := range map[string]struct {
		f    func(*completer) cobra.CompletionFunc
		line []string
	}{
		"services":   {func(c *completer) cobra.CompletionFunc { return c.serviceArg }, []string{"intercept", ""}},
		"namespaces": {func(c *completer) cobra.CompletionFunc { return c.namespaces }, []string{"up", ""}},
		"intercepts": {func(c *completer) cobra.CompletionFunc { return c.interceptArg }, []string{"leave", ""}},
		"contexts":   {func(c *completer) cobra.CompletionFunc { return c.contexts }, []string{"up", "--kubeconfig", "/nonexistent/config", ""}},
	} {
		got, dir := complete(t, tc.f, c, tc.line...)
		if len(got) != 0 || dir != cobra.ShellCompDirectiveNoFileComp {
			t.Errorf("%s: got %q, %v; want nothing, NoFileComp", name, got, dir)
		}
	}
}

// TestCompleteLeave: leave completes the session's intercepts, through
// the real socket client against a socket serving /status.
func TestCompleteLeave(t *testing.T) {
	dir := t.TempDir()
	st := session.Status{State: "connected", Intercepts: []session.InterceptInfo{
		{Service: "web", LocalPort: 3000, State: session.InterceptActive},
		{Service: "api", LocalPort: 8080, State: session.InterceptActive},
	}}
	serveStatus(t, filepath.Join(dir, "bridgetun.sock"), st)
	t.Setenv("BRIDGETUN_STATE_DIR", dir)
	out := execComplete(t, "leave", "")
	want := "api\t" + string(session.InterceptActive) + " → 127.0.0.1:8080\nweb\t" + string(session.InterceptActive) + " → 127.0.0.1:3000\n:4\n"
	if out != want {
		t.Errorf("got %q, want %q", out, want)
	}
	if out := execComplete(t, "leave", "api", ""); out != ":4\n" {
		t.Errorf("second SERVICE: got %q, want only the directive", out)
	}
}

// TestCompletionsRegistered: through cobra's __complete, every command
// that takes a SERVICE, a namespace or a context has its function (an
// unregistered one would answer :0, file names), and with a cluster that
// accepts connections but never answers each returns nothing within the
// completion timeout.
func TestCompletionsRegistered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never answered
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	hang := filepath.Join(t.TempDir(), "config")
	writeKubeconfig(t, hang, "https://"+ln.Addr().String(), "hang")
	// A port nobody listens on: refused at once.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	refused := filepath.Join(t.TempDir(), "config")
	writeKubeconfig(t, refused, "https://"+closed.Addr().String(), "hang")
	t.Setenv("BRIDGETUN_STATE_DIR", t.TempDir())
	for _, tc := range []struct {
		kubeconfig string
		line       []string
	}{
		{hang, []string{"intercept", ""}},
		{hang, []string{"up", "-n", ""}},
		{refused, []string{"leave", ""}},
		{refused, []string{"run", "--service", ""}},
		{refused, []string{"up", "--gateway-namespace", ""}},
		{refused, []string{"install", "--namespace", ""}},
		{refused, []string{"uninstall", "-n", ""}},
		{refused, []string{"intercept", "-n", ""}},
		{refused, []string{"run", "-n", ""}},
	} {
		t.Setenv("KUBECONFIG", tc.kubeconfig)
		start := time.Now()
		out := execComplete(t, tc.line...)
		if took := time.Since(start); took > completionTimeout+3*time.Second {
			t.Errorf("%q: took %v, want about the completion timeout (%v) at most", tc.line, took, completionTimeout)
		}
		if out != ":4\n" {
			t.Errorf("%q: got %q, want no candidates and no file completion (:4)", tc.line, out)
		}
	}
	for _, line := range [][]string{{"up", "--context", ""}, {"intercept", "--context", "h"}, {"run", "--context", ""}} {
		if out := execComplete(t, line...); out != "hang\tcluster hang\n:4\n" {
			t.Errorf("%q: got %q, want the kubeconfig's context", line, out)
		}
	}
}

// execComplete runs `bridgetun __complete LINE...` in-process and returns
// its stdout.
func execComplete(t *testing.T, line ...string) string {
	t.Helper()
	root := newRootCmd()
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&strings.Builder{})
	root.SetArgs(append([]string{cobra.ShellCompRequestCmd}, line...))
	if err := root.Execute(); err != nil {
		t.Fatalf("__complete %q: %v", line, err)
	}
	return out.String()
}

func writeKubeconfig(t *testing.T, path, server string, contexts ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Config\nusers: [{name: u, user: {token: t}}]\nclusters:\n")
	for _, c := range contexts {
		b.WriteString("- {name: " + c + ", cluster: {server: \"" + server + "\", insecure-skip-tls-verify: true}}\n")
	}
	b.WriteString("contexts:\n")
	for _, c := range contexts {
		b.WriteString("- {name: " + c + ", context: {cluster: " + c + ", user: u}}\n")
	}
	b.WriteString("current-context: " + contexts[0] + "\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveStatus answers GET /status with st on a Unix socket at path.
func serveStatus(t *testing.T, path string, st session.Status) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(st) })
	srv := &http.Server{Handler: mux}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
}
