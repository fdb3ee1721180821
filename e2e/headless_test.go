package e2e

// Headless use (issue 7): an unprivileged user in the workstation namespace,
// no TTY, no BRIDGETUN_STATE_DIR: the session finds its places from
// $XDG_RUNTIME_DIR, $XDG_STATE_HOME and $TMPDIR like it would over SSH, and everything goes
// through the netstack: SOCKS5 (TCP and UDP ASSOCIATE), HTTP proxy, local
// forwards (TCP and UDP, one loopback address per Service), `run`.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/session"
)

// userCmd runs bridgetun (or anything) as User in bt-ws with no TTY: stdin
// is /dev/null and there is no controlling terminal (setpriv keeps none).
func userCmd(ctx context.Context, c *Cluster, env []string, args ...string) *exec.Cmd {
	cmd := c.InWorkstationAs(ctx, User, args...)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = nil
	return cmd
}

// userBridgetun returns a runner of bridgetun (bin) as User with env (plus
// extra per call), and ends that user's session at cleanup, logging the
// session log's tail (under state) when the test failed.
func userBridgetun(t *testing.T, ctx context.Context, c *Cluster, bin, state string, env []string) func(extra []string, args ...string) (string, error) {
	t.Cleanup(func() {
		out, _ := userCmd(context.Background(), c, env, bin, "down").CombinedOutput()
		if t.Failed() {
			t.Logf("down: %s", out)
			if b, err := os.ReadFile(filepath.Join(state, "bridgetun", "bridgetun.log")); err == nil {
				t.Logf("--- session log (tail):\n%s", tailLines(string(b), 60))
			}
		}
	})
	return func(extra []string, args ...string) (string, error) {
		out, err := userCmd(ctx, c, append(append([]string{}, env...), extra...), append([]string{bin}, args...)...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("bridgetun %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
}

func TestHeadless(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.Repo, "bin", "bridgetun")
	statsIP := clusterIP(t, ctx, c, "stats")
	dnsIP := clusterIP(t, ctx, c, "udp-echo")

	// $XDG_RUNTIME_DIR, $XDG_STATE_HOME and $TMPDIR as an SSH session would have them.
	base, err := os.MkdirTemp("", "bt-headless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	xdg, state, tmp := filepath.Join(base, "run"), filepath.Join(base, "state"), filepath.Join(base, "tmp")
	for _, d := range []string{xdg, state, tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", User, base).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	env := []string{"XDG_RUNTIME_DIR=" + xdg, "XDG_STATE_HOME=" + state, "TMPDIR=" + tmp, "TERM=dumb"}
	runWith := userBridgetun(t, ctx, c, bin, state, env)
	run := func(args ...string) (string, error) { return runWith(nil, args...) }

	t.Run("status before up: exit code 1, one line saying what to do", func(t *testing.T) {
		out, err := run("status")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "bridgetun up") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("status before up: %v, %q; want exit 1 and one line naming `bridgetun up`", err, out)
		}
	})

	t.Run("bad forwards fail with one clear line and leave nothing running", func(t *testing.T) {
		// A port taken by another program of this user.
		busy := userCmd(ctx, c, env, c.Testapp, "http", "-listen", "127.0.0.2:18199")
		if err := busy.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = busy.Process.Kill(); _ = busy.Wait() }()
		if err := Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			_, err := c.inWS(ctx, c.Testapp, "dial", "-timeout", "1s", "127.0.0.2:18199")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ forward, want string }{
			{"nope", `service "nope"`},
			{"stats=18199", "127.0.0.2:18199 (tcp) is already in use"},
		} {
			out, err := run("up", "--background", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage,
				"--transport", "stream", "--upgrade", "--forward", tc.forward)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("up --forward %s: %v\n%s\nwant an error containing %q", tc.forward, err, out, tc.want)
			}
			if st, err := run("status"); err == nil {
				t.Errorf("after the failed up --forward %s a session runs:\n%s", tc.forward, st)
			}
		}
	})

	out, err := run("up", "--background", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "stream", "--upgrade", "--forward", "stats=18181", "--forward", "udp-echo", "--forward-all")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up --netstack --background:\n%s", out)

	t.Run("no colour or control characters without a terminal", func(t *testing.T) {
		st, _ := run("status")
		for _, s := range []string{out, st} {
			if strings.ContainsAny(s, "\x1b\r") {
				t.Errorf("output has escape or carriage-return characters: %q", s)
			}
		}
	})
	t.Run("socket under $XDG_RUNTIME_DIR, logs under $XDG_STATE_HOME/bridgetun", func(t *testing.T) {
		if fi, err := os.Stat(filepath.Join(xdg, "bridgetun", "bridgetun.sock")); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("socket: %v %v, want an owner-only socket at $XDG_RUNTIME_DIR/bridgetun/bridgetun.sock", fi, err)
		}
		entries, err := os.ReadDir(filepath.Join(state, "bridgetun"))
		if err != nil || len(entries) == 0 {
			t.Errorf("logs under $XDG_STATE_HOME/bridgetun: %v %v", entries, err)
		}
		// Per-user paths (issue #12.5): nothing in the shared $TMPDIR/bridgetun another user may own.
		if _, err := os.Stat(filepath.Join(tmp, "bridgetun")); err == nil {
			t.Errorf("$TMPDIR/bridgetun exists: logs and mirrors belong in the user's own dirs")
		}
	})
	t.Run("HTTP through the HTTP proxy and SOCKS5, names resolved in the cluster", func(t *testing.T) {
		for _, px := range []string{"http://127.0.0.1:3128", "socks5://127.0.0.1:1080"} {
			out, err := userCmd(ctx, c, append(env, "HTTP_PROXY="+px), c.Testapp, "get", "http://stats/").CombinedOutput()
			if err != nil || !strings.Contains(compactJSON(string(out)), `"service":"stats"`) {
				t.Errorf("GET http://stats/ through %s: %v %.200s", px, err, out)
			}
		}
	})
	t.Run("DNS query over SOCKS5 UDP ASSOCIATE", func(t *testing.T) {
		svc, err := c.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		dns := svc.Spec.ClusterIP
		out, err := userCmd(ctx, c, env, c.Testapp, "lookup", "-socks", "127.0.0.1:1080", "-server", dns+":53",
			"stats.bt-sample.svc.cluster.local").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != statsIP {
			t.Errorf("lookup over SOCKS5 UDP: %q, %v; want %s", out, err, statsIP)
		}
	})
	t.Run("forwards: TCP and UDP, Kubernetes-style variables in run", func(t *testing.T) {
		out, err := run("run", "--", "sh", "-c", c.Testapp+` get http://$STATS_SERVICE_HOST:$STATS_SERVICE_PORT/`)
		if err != nil || !strings.Contains(compactJSON(out), `"service":"stats"`) {
			t.Errorf("run -- get $STATS_SERVICE_HOST:$STATS_SERVICE_PORT: %.300s %v", out, err)
		}
		out, err = run("run", "--", "sh", "-c", c.Testapp+` udp -timeout 3s $UDP_ECHO_SERVICE_HOST:$UDP_ECHO_SERVICE_PORT hello-udp-forward`)
		if err != nil || !strings.Contains(out, "hello-udp-forward") {
			t.Errorf("UDP forward to udp-echo (%s): %.300s %v", dnsIP, out, err)
		}
	})
	t.Run("--forward-all follows the namespace's Services", func(t *testing.T) {
		forwardOf := func(svc string) (session.Forward, error) {
			out, err := run("status", "--json")
			if err != nil {
				return session.Forward{}, err
			}
			var st session.Status
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				return session.Forward{}, err
			}
			for _, f := range st.Forwards {
				if f.Service == svc && f.Protocol == "tcp" {
					return f, nil
				}
			}
			return session.Forward{}, fmt.Errorf("no forward for %s in %v", svc, st.Forwards)
		}
		f, err := forwardOf("frontend")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(f.Local, ":10080") {
			t.Errorf("frontend forward %s: want port 10080 (80 needs root)", f.Local)
		}
		if out, err := userCmd(ctx, c, env, c.Testapp, "get", "http://"+f.Local+"/").CombinedOutput(); err != nil || !strings.Contains(compactJSON(string(out)), `"service":"frontend"`) {
			t.Errorf("GET through the frontend forward %s: %v %.200s", f.Local, err, out)
		}
		// A Service created later gets a forward; deleted, it loses it.
		late := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "late", Namespace: SampleNamespace},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "stats"},
				Ports: []corev1.ServicePort{{Port: 8081, TargetPort: intstr.FromInt32(8080)}}},
		}
		if _, err := c.Client.CoreV1().Services(SampleNamespace).Create(ctx, late, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var lf session.Forward
		if err := Eventually(ctx, 30*time.Second, func(context.Context) error { lf, err = forwardOf("late"); return err }); err != nil {
			t.Fatal(err)
		}
		// kube-proxy programs the new ClusterIP a moment after the forward appears.
		if err := Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
			out, err := userCmd(ctx, c, env, c.Testapp, "get", "-timeout", "2s", "http://"+lf.Local+"/").CombinedOutput()
			if err != nil || !strings.Contains(compactJSON(string(out)), `"service":"stats"`) {
				return fmt.Errorf("%v %.200s", err, out)
			}
			return nil
		}); err != nil {
			t.Errorf("GET through the late forward %s: %v", lf.Local, err)
		}
		if err := c.Client.CoreV1().Services(SampleNamespace).Delete(ctx, "late", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(ctx, 30*time.Second, func(context.Context) error {
			if _, err := forwardOf("late"); err == nil {
				return fmt.Errorf("forward for late still listed")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if _, err := c.inWS(ctx, c.Testapp, "dial", "-timeout", "1s", lf.Local); err == nil {
			t.Errorf("%s still accepts after the Service was deleted", lf.Local)
		}
	})
	t.Run("bad input is refused and the rest keeps working", func(t *testing.T) {
		// A SOCKS CONNECT to the gateway's own loopback is refused.
		ws, err := nstest.Open(WorkstationNS)
		if err != nil {
			t.Fatal(err)
		}
		code, err := socksConnect(ctx, ws, "127.0.0.1:1080", "127.0.0.1:8081")
		if err != nil || code == 0 {
			t.Errorf("SOCKS CONNECT 127.0.0.1:8081 (the gateway's control port): reply %d, %v; want a refusal", code, err)
		}
		// A second session of the same user is refused, naming the running one.
		if out, err := run("up", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage); err == nil || !strings.Contains(out, "already") {
			t.Errorf("second up: %v %q, want a refusal", err, out)
		}
		// The first session still answers.
		out, err := userCmd(ctx, c, append(env, "HTTP_PROXY=socks5://127.0.0.1:1080"), c.Testapp, "get", "http://stats/").CombinedOutput()
		if err != nil || !strings.Contains(compactJSON(string(out)), `"service":"stats"`) {
			t.Errorf("after the refusals: %v %.200s", err, out)
		}
	})
	t.Run("down: exit 0, then status says not up", func(t *testing.T) {
		if _, err := run("down"); err != nil {
			t.Fatal(err)
		}
		if _, err := run("status"); err == nil {
			t.Errorf("status after down: exit 0, want 1")
		}
		if _, err := os.Stat(filepath.Join(xdg, "bridgetun", "bridgetun.sock")); !os.IsNotExist(err) {
			t.Errorf("socket after down: %v, want gone", err)
		}
	})
}

// socksConnect sends a SOCKS5 CONNECT for target through proxy (inside ns)
// and returns the reply code (0 = succeeded).
func socksConnect(ctx context.Context, ns *nstest.NS, proxy, target string) (byte, error) {
	c, err := ns.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	host, port, _ := net.SplitHostPort(target)
	ip := net.ParseIP(host).To4()
	var p uint16
	fmt.Sscan(port, &p)
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return 0, err
	}
	br := bufio.NewReader(c)
	var m [2]byte
	if _, err := io.ReadFull(br, m[:]); err != nil {
		return 0, err
	}
	req := append([]byte{5, 1, 0, 1}, ip...)
	req = append(req, byte(p>>8), byte(p))
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	var rep [4]byte
	if _, err := io.ReadFull(br, rep[:]); err != nil {
		return 0, err
	}
	return rep[1], nil
}
