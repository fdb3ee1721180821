package cluster

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// writeKubeconfig writes a kubeconfig with one cluster per context name,
// each pointing at server, and returns its path.
func writeKubeconfig(t *testing.T, server, current string, contexts map[string]string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\ncurrent-context: %q\nclusters:\n- name: c\n  cluster:\n    server: %s\nusers:\n- name: u\n  user:\n    token: secret-token\ncontexts:\n", current, server)
	for name, ns := range contexts {
		fmt.Fprintf(&b, "- name: %s\n  context:\n    cluster: c\n    user: u\n", name)
		if ns != "" {
			fmt.Fprintf(&b, "    namespace: %s\n", ns)
		}
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeAPIServer answers /version, or 401 when reject is set.
func fakeAPIServer(t *testing.T, reject bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if reject {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}`)
			return
		}
		fmt.Fprint(w, `{"major":"1","minor":"34","gitVersion":"v1.34.4"}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// isolate keeps the real ~/.kube/config, $KUBECONFIG and in-cluster
// environment out of the test.
func isolate(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
}

func TestConnect(t *testing.T) {
	isolate(t)
	up := fakeAPIServer(t, false)
	rejecting := fakeAPIServer(t, true)
	kc := writeKubeconfig(t, up, "dev", map[string]string{"dev": "team-a", "bare": ""})

	tests := []struct {
		name          string
		opts          Options
		env           string // $KUBECONFIG
		wantContext   string
		wantNamespace string
		wantErr       string // substring; "" = success
	}{
		{name: "current context and its namespace", opts: Options{Kubeconfig: kc}, wantContext: "dev", wantNamespace: "team-a"},
		{name: "context without namespace", opts: Options{Kubeconfig: kc, Context: "bare"}, wantContext: "bare", wantNamespace: "default"},
		{name: "namespace override", opts: Options{Kubeconfig: kc, Namespace: "other"}, wantContext: "dev", wantNamespace: "other"},
		{name: "KUBECONFIG", env: kc, wantContext: "dev", wantNamespace: "team-a"},
		{name: "missing file", opts: Options{Kubeconfig: "/nonexistent/kubeconfig"}, wantErr: "kubeconfig /nonexistent/kubeconfig: no such file or directory: pass an existing file with --kubeconfig"},
		{name: "no kubeconfig", wantErr: "no kubeconfig: set KUBECONFIG or pass --kubeconfig"},
		{name: "unknown context", opts: Options{Kubeconfig: kc, Context: "prod"}, wantErr: `context "prod" not found in kubeconfig (` + kc + `): pass --context with one of: bare, dev`},
		{name: "credentials rejected", opts: Options{Kubeconfig: writeKubeconfig(t, rejecting, "x", map[string]string{"x": ""})},
			wantErr: `context "x": API server ` + rejecting + ` rejected the credentials`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tt.env)
			c, err := Connect(t.Context(), tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Context != tt.wantContext || c.Namespace != tt.wantNamespace || c.Host != up {
				t.Errorf("got context %q namespace %q host %q, want %q %q %q", c.Context, c.Namespace, c.Host, tt.wantContext, tt.wantNamespace, up)
			}
		})
	}
}

func TestConnectUnreachable(t *testing.T) {
	isolate(t)
	kc := writeKubeconfig(t, "https://127.0.0.1:1", "x", map[string]string{"x": ""})
	start := time.Now()
	_, err := Connect(t.Context(), Options{Kubeconfig: kc, ProbeTimeout: 3 * time.Second})
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("Connect took %v, want within the 3s probe timeout", took)
	}
	want := `context "x": API server https://127.0.0.1:1: unreachable (`
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "): check the cluster is running and your network") {
		t.Fatalf("got %v, want %q...", err, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	t.Log(err)
}

func TestConnectTimeout(t *testing.T) {
	isolate(t)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hang)
	kc := writeKubeconfig(t, srv.URL, "x", map[string]string{"x": ""})
	_, err := Connect(t.Context(), Options{Kubeconfig: kc, ProbeTimeout: 300 * time.Millisecond})
	want := "unreachable (no answer within 300ms)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want it to contain %q", err, want)
	}
}

func TestAPIServerAddrs(t *testing.T) {
	tests := []struct {
		host string
		want []netip.Addr
	}{
		{"https://10.88.0.1:6443", []netip.Addr{netip.MustParseAddr("10.88.0.1")}},
		{"https://[fd00::1]:6443", []netip.Addr{netip.MustParseAddr("fd00::1")}},
		{"10.0.0.5:443", []netip.Addr{netip.MustParseAddr("10.0.0.5")}},
		{"https://localhost:6443", nil}, // resolved: just non-empty and loopback
	}
	for _, tt := range tests {
		got, err := (&Conn{Host: tt.host}).APIServerAddrs(context.Background())
		if err != nil {
			t.Errorf("%s: %v", tt.host, err)
			continue
		}
		if tt.want == nil {
			if len(got) == 0 || !got[0].IsLoopback() {
				t.Errorf("%s: got %v, want loopback addresses", tt.host, got)
			}
			continue
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: got %v, want %v", tt.host, got, tt.want)
		}
	}
}

// Under sudo the kubeconfig is the invoking user's: their ~/.kube/config
// although $HOME is root's and KUBECONFIG was dropped, read with their
// rights, so a file they cannot read (root's, or theirs made unreadable)
// fails in one line naming it and them.
func TestConnectSudo(t *testing.T) {
	testkit.RequireRoot(t)
	isolate(t)
	const nobody = 65534
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	home := filepath.Join(dir, "home")
	kube := filepath.Join(home, ".kube")
	if err := os.MkdirAll(kube, 0o755); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(kube, "config")
	b, err := os.ReadFile(writeKubeconfig(t, fakeAPIServer(t, false), "dev", map[string]string{"dev": "team-a"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(theirs, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rootOnly := filepath.Join(dir, "admin.kubeconfig")
	if err := os.WriteFile(rootOnly, b, 0o600); err != nil {
		t.Fatal(err)
	}
	u := invoker.ActingFor(nobody, nobody, "nobody", home, nil)
	denied := func(f string) string {
		return "kubeconfig " + f + ": permission denied (read as nobody (uid 65534), for whom sudo runs bridgetun): let nobody read it, or pass another with --kubeconfig"
	}

	if _, err := Connect(t.Context(), Options{ReadAs: u}); err == nil || err.Error() != denied(theirs) {
		t.Errorf("their file unreadable (root's 0600): got %v, want %q", err, denied(theirs))
	}
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(t.Context(), Options{ReadAs: u})
	if err != nil {
		t.Fatalf("their own ~/.kube/config: %v", err)
	}
	if c.Context != "dev" || c.Namespace != "team-a" {
		t.Errorf("got context %q namespace %q, want dev team-a", c.Context, c.Namespace)
	}
	// A file the kubeconfig names (here its client key) that only root reads.
	key := filepath.Join(dir, "admin.key")
	if err := os.WriteFile(key, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	withKey := filepath.Join(home, "with-key.kubeconfig")
	if err := os.WriteFile(withKey, []byte(strings.Replace(string(b), "token: secret-token", "client-certificate-data: eA==\n    client-key: "+key, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(withKey, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	wantKey := "(read as nobody (uid 65534), for whom sudo runs bridgetun): let nobody read it, or pass another --kubeconfig"
	if _, err := Connect(t.Context(), Options{ReadAs: u, Kubeconfig: withKey}); err == nil || !strings.Contains(err.Error(), key) || !strings.HasSuffix(err.Error(), wantKey) {
		t.Errorf("client key only root reads: got %v, want it named and %q", err, wantKey)
	}
	t.Setenv("KUBECONFIG", rootOnly) // sudo -E, pointing at root's admin file
	if _, err := Connect(t.Context(), Options{ReadAs: u}); err == nil || err.Error() != denied(rootOnly) {
		t.Errorf("KUBECONFIG kept by sudo, root's file: got %v, want %q", err, denied(rootOnly))
	}
	if _, err := Connect(t.Context(), Options{ReadAs: u, Kubeconfig: rootOnly}); err == nil || err.Error() != denied(rootOnly) {
		t.Errorf("--kubeconfig root's file: got %v, want %q", err, denied(rootOnly))
	}
	t.Setenv("KUBECONFIG", "")
	if err := os.Remove(theirs); err != nil {
		t.Fatal(err)
	}
	want := "no kubeconfig for nobody (looked for " + theirs + "): sudo drops KUBECONFIG"
	if _, err := Connect(t.Context(), Options{ReadAs: u}); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("none in their home: got %v, want %q…", err, want)
	}
}
