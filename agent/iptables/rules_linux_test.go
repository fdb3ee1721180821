package iptables

// The rules proven for real, in namespaces this test creates:
//
//	client 10.201.0.1 ──veth── 10.201.0.2 pod: "container" on :8080, "sidecar" on :15001
//
// Inbound 8080 must land on the sidecar; the sidecar's own connections to
// 127.0.0.1:8080 (pass-through) must reach the container; anyone else's
// local connections are redirected too; Cleanup restores plain routing.

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// nsRunner runs the tools inside a namespace.
type nsRunner struct{ ns *nstest.NS }

func (r nsRunner) Run(name string, args []string, stdin string) (string, error) {
	return Exec{}.Run("ip", append([]string{"netns", "exec", r.ns.Name, name}, args...), stdin)
}

const sidecarUID = 65532

func TestRulesInNamespace(t *testing.T) {
	testkit.RequireRoot(t)
	lab := nstest.NewLab("ipt")
	t.Cleanup(func() { _ = lab.Close() })
	client, err := lab.NewNS("client")
	if err != nil {
		t.Fatal(err)
	}
	pod, err := lab.NewNS("pod")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.Link(client, "eth0", "10.201.0.1/24", pod, "eth0", "10.201.0.2/24"); err != nil {
		t.Fatal(err)
	}
	for port, name := range map[string]string{"8080": "container", "15001": "sidecar"} {
		ln, err := pod.Listen("tcp", "0.0.0.0:"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, name)
				c.Close()
			}
		}()
	}
	run := nsRunner{pod}
	rules := Rules{ContainerPort: 8080, SidecarPort: 15001, SidecarUID: sidecarUID}

	fromClient := func() string {
		return answer(t, func(ctx context.Context) (net.Conn, error) { return client.DialContext(ctx, "tcp", "10.201.0.2:8080") })
	}
	localAs := func(uid string) string {
		out, err := pod.Output("setpriv", "--reuid", uid, "--regid", uid, "--clear-groups",
			"bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && cat <&3")
		if err != nil {
			t.Fatalf("local connect as uid %s: %v", uid, err)
		}
		return strings.TrimSpace(out)
	}

	if got := fromClient(); got != "container" {
		t.Fatalf("before rules: got %q, want container", got)
	}
	for range 2 { // applying twice must not duplicate anything
		if err := Apply(run, rules); err != nil {
			t.Fatal(err)
		}
	}
	saved, err := pod.Output("iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(rules.Render()), "\n") {
		if !strings.HasPrefix(line, "-A") {
			continue
		}
		if n := strings.Count(saved, "\n"+line+"\n"); n != 1 {
			t.Errorf("after two applies, %q appears %d times, want 1:\n%s", line, n, saved)
		}
	}
	for _, tc := range []struct{ name, got, want string }{
		{"inbound", fromClient(), "sidecar"},
		{"sidecar's own pass-through", localAs("65532"), "container"},
		{"another local user", localAs("1000"), "sidecar"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	for range 2 {
		if err := Cleanup(run); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	saved, _ = pod.Output("iptables-save", "-t", "nat")
	if strings.Contains(saved, "BRIDGETUN") {
		t.Errorf("after cleanup, iptables still has our chains:\n%s", saved)
	}
	if got := fromClient(); got != "container" {
		t.Errorf("after cleanup: got %q, want container", got)
	}
}

func answer(t *testing.T, dial func(context.Context) (net.Conn, error)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(b)
}
