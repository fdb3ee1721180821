package session

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	xproxy "golang.org/x/net/proxy"
)

func TestProxyCredentialsFrom(t *testing.T) {
	for _, tc := range []struct {
		name, flag, env string
		want            ProxyCredentials
		wantErr         string
	}{
		{name: "none"},
		{name: "flag", flag: "me:s3cret", want: ProxyCredentials{User: "me", Password: "s3cret"}},
		{name: "env when the flag is unset", env: "me:from-env", want: ProxyCredentials{User: "me", Password: "from-env"}},
		{name: "flag beats env", flag: "a:b", env: "c:d", want: ProxyCredentials{User: "a", Password: "b"}},
		{name: "password may hold colons", flag: "me:p:a:ss", want: ProxyCredentials{User: "me", Password: "p:a:ss"}},
		{name: "no colon", flag: "me", wantErr: "--socks-auth: want USER:PASS"},
		{name: "empty password", flag: "me:", wantErr: "--socks-auth: want USER:PASS"},
		{name: "empty user from env", env: ":pw", wantErr: "$BRIDGETUN_TEST_AUTH: want USER:PASS"},
		{name: "too long", flag: "me:" + strings.Repeat("x", 256), wantErr: "at most 255 bytes"},
		{name: "line break", flag: "me:a\nb", wantErr: "no line breaks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("BRIDGETUN_TEST_AUTH", tc.env)
			got, err := ProxyCredentialsFrom("socks-auth", tc.flag, "BRIDGETUN_TEST_AUTH")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "\n") {
					t.Fatalf("got %v, want one line containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestProxyAuth: the netstack proxies as startProxy builds them, each with
// its own credentials, over real loopback connections. Topology:
//
//	test client ──► SOCKS5 127.0.0.1:0 (socks/pw1) ─┐
//	test client ──► HTTP   127.0.0.1:0 (web/pw2)  ──┴─ Dial 10.96.0.21:7 ──► loopback echo
func TestProxyAuth(t *testing.T) {
	echo := testkit.EchoServer(t)
	p, err := startProxy(proxyConfig{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != "10.96.0.21:7" {
				return nil, fmt.Errorf("test dial %s: no route to host", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, echo)
		},
		DNS:       "127.0.0.1:1", // names are not used here
		SOCKSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		SOCKSAuth: ProxyCredentials{User: "socks", Password: "pw1"},
		HTTPAuth:  ProxyCredentials{User: "web", Password: "pw2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	t.Run("socks", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			auth    *xproxy.Auth
			wantErr string
		}{
			{name: "right credentials", auth: &xproxy.Auth{User: "socks", Password: "pw1"}},
			{name: "wrong password", auth: &xproxy.Auth{User: "socks", Password: "pw2"}, wantErr: "authentication failed"},
			{name: "the HTTP proxy's credentials", auth: &xproxy.Auth{User: "web", Password: "pw2"}, wantErr: "authentication failed"},
			{name: "none", wantErr: "no acceptable authentication methods"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d, err := xproxy.SOCKS5("tcp", p.socks, tc.auth, &net.Dialer{Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				c, err := d.Dial("tcp", "10.96.0.21:7")
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				echoOnce(t, c)
			})
		}
	})
	t.Run("http", func(t *testing.T) {
		basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
		for _, tc := range []struct {
			name, header string
			want         int
		}{
			{name: "right credentials", header: basic("web", "pw2"), want: http.StatusOK},
			{name: "wrong password", header: basic("web", "pw1"), want: http.StatusProxyAuthRequired},
			{name: "the SOCKS proxy's credentials", header: basic("socks", "pw1"), want: http.StatusProxyAuthRequired},
			{name: "none", want: http.StatusProxyAuthRequired},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := net.Dial("tcp", p.http)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "CONNECT 10.96.0.21:7 HTTP/1.1\r\nHost: 10.96.0.21:7\r\n")
				if tc.header != "" {
					fmt.Fprintf(c, "Proxy-Authorization: %s\r\n", tc.header)
				}
				io.WriteString(c, "\r\n")
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != tc.want {
					t.Fatalf("CONNECT: got %d, want %d", resp.StatusCode, tc.want)
				}
				if resp.StatusCode == http.StatusProxyAuthRequired {
					if got := resp.Header.Get("Proxy-Authenticate"); !strings.HasPrefix(got, "Basic ") {
						t.Fatalf("407 with Proxy-Authenticate %q, want a Basic challenge", got)
					}
					return
				}
				echoOnce(t, c)
			})
		}
	})
	if got, want := p.Auth(), (ProxyAuth{SOCKS: ProxyCredentials{"socks", "pw1"}, HTTP: ProxyCredentials{"web", "pw2"}}); got != want {
		t.Errorf("Auth: got %+v, want %+v", got, want)
	}
}

// TestRunEnvCarriesProxyCredentials: the socket API's status carries the
// proxies' credentials, and RunEnv puts them, escaped, into the proxy URLs
// that run exports; without them the URLs are bare.
func TestRunEnvCarriesProxyCredentials(t *testing.T) {
	auth := &ProxyAuth{SOCKS: ProxyCredentials{User: "me", Password: "p@ss:w/rd"}, HTTP: ProxyCredentials{User: "web", Password: "pw"}}
	client, _, stop := testAPI(t, apiHandlers{status: func() Status {
		return Status{SOCKSProxy: "127.0.0.1:1080", HTTPProxy: "127.0.0.1:3128", ProxyAuth: auth}
	}})
	defer stop()
	st, err := client.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(RunEnv(st), "\n")
	for _, want := range []string{
		"ALL_PROXY=socks5h://me:p%40ss%3Aw%2Frd@127.0.0.1:1080",
		"all_proxy=socks5h://me:p%40ss%3Aw%2Frd@127.0.0.1:1080",
		"HTTP_PROXY=http://web:pw@127.0.0.1:3128",
		"HTTPS_PROXY=http://web:pw@127.0.0.1:3128",
	} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("RunEnv: missing %s in\n%s", want, env)
		}
	}
	st.ProxyAuth = nil
	if env := strings.Join(RunEnv(st), "\n"); !strings.Contains(env, "ALL_PROXY=socks5h://127.0.0.1:1080\n") || strings.Contains(env, "@") {
		t.Errorf("RunEnv without credentials:\n%s", env)
	}
}

// echoOnce proves c reaches the echo.
func echoOnce(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
		t.Fatalf("echo: got %q, %v", b, err)
	}
}
