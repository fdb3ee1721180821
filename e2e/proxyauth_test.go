package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProxyCredentials (issue #13.5): `up --netstack` with the proxies'
// credentials in $BRIDGETUN_SOCKS_AUTH / $BRIDGETUN_HTTP_PROXY_AUTH, as an
// unprivileged user in bt-ws. Without credentials, or with wrong ones,
// neither proxy carries a request; `bridgetun run` exports proxy URLs
// that carry them and its command reaches a Service through each; the
// passwords are neither on the session's command line nor in status.
func TestProxyCredentials(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(c.Repo, "bin", "bridgetun")
	base, err := os.MkdirTemp("", "bt-proxyauth-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	xdg, state := filepath.Join(base, "run"), filepath.Join(base, "state")
	for _, d := range []string{xdg, state} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", User, base).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	const (
		socksPass = "s0cks-Pw@1"
		httpPass  = "h77p-Pw:2"
		socks     = "127.0.0.1:11080"
		httpProxy = "127.0.0.1:13128"
	)
	env := []string{"XDG_RUNTIME_DIR=" + xdg, "XDG_STATE_HOME=" + state, "TERM=dumb"}
	run := userBridgetun(t, ctx, c, bin, state, env)
	secrets := []string{"BRIDGETUN_SOCKS_AUTH=dev:" + socksPass, "BRIDGETUN_HTTP_PROXY_AUTH=web:" + httpPass}
	out, err := run(secrets, "up", "--background", "--netstack", "-n", SampleNamespace, "--gateway-image", gatewayImage,
		"--transport", "stream", "--upgrade", "--socks", socks, "--http-proxy", httpProxy)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("up --netstack --background:\n%s", out)

	get := func(proxyURL string) (string, error) {
		out, err := userCmd(ctx, c, append(append([]string{}, env...), "HTTP_PROXY="+proxyURL), c.Testapp, "get", "http://stats/").CombinedOutput()
		return string(out), err
	}
	t.Run("no or wrong credentials: refused", func(t *testing.T) {
		for _, px := range []string{
			"http://" + httpProxy, "http://web:wrong@" + httpProxy, "http://dev:" + strings.ReplaceAll(socksPass, "@", "%40") + "@" + httpProxy,
			"socks5://" + socks, "socks5://dev:wrong@" + socks,
		} {
			if out, err := get(px); err == nil || strings.Contains(compactJSON(out), `"service":"stats"`) {
				t.Errorf("GET http://stats/ through %s: %v %.200s; want it refused", px, err, out)
			} else if strings.HasPrefix(px, "http://") && !strings.Contains(out, "407") {
				t.Errorf("GET through %s: %.200s; want 407 Proxy Authentication Required", px, out)
			}
		}
	})
	t.Run("run exports proxy URLs with the credentials", func(t *testing.T) {
		out, err := run(nil, "run", "--", "sh", "-c", `echo "$ALL_PROXY $HTTP_PROXY"`)
		want := "socks5h://dev:s0cks-Pw%401@" + socks + " http://web:h77p-Pw%3A2@" + httpProxy
		if err != nil || strings.TrimSpace(out) != want {
			t.Errorf("run's proxy variables: got %q, %v; want %q", out, err, want)
		}
		for name, script := range map[string]string{
			"HTTP proxy":   c.Testapp + " get http://stats/",
			"SOCKS5 proxy": "HTTP_PROXY=$ALL_PROXY " + c.Testapp + " get http://stats/",
		} {
			out, err := run(nil, "run", "--", "sh", "-c", script)
			if err != nil || !strings.Contains(compactJSON(out), `"service":"stats"`) {
				t.Errorf("run -- get http://stats/ through the %s: %.300s %v", name, out, err)
			}
		}
	})
	t.Run("the passwords are not on the command line nor in status", func(t *testing.T) {
		st, err := run(nil, "status", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			PID int `json:"pid"`
		}
		if err := json.Unmarshal([]byte(st), &s); err != nil || s.PID == 0 {
			t.Fatalf("status --json: %v %q", err, st)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.PID))
		if err != nil {
			t.Fatal(err)
		}
		diag, _ := run(nil, "status", "--diagnostics")
		for what, s := range map[string]string{"the session's command line": string(cmdline), "status --json": st, "status --diagnostics": diag} {
			if strings.Contains(s, "Pw") {
				t.Errorf("%s shows a proxy password: %q", what, s)
			}
		}
	})
}
