package devflow

import (
	"testing"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// TestRunExportsProxyCredentials: with the session's proxies requiring
// credentials (up --socks-auth/--http-proxy-auth), the command run starts
// gets proxy URLs that carry them, escaped.
func TestRunExportsProxyCredentials(t *testing.T) {
	fs := &fakeSession{status: session.Status{
		Context: "kind-dev", Namespace: "ns", SOCKSProxy: "127.0.0.1:1080", HTTPProxy: "127.0.0.1:3128",
		ProxyAuth: &session.ProxyAuth{
			SOCKS: session.ProxyCredentials{User: "me", Password: "p@ss"},
			HTTP:  session.ProxyCredentials{User: "web", Password: "pw"},
		},
	}}
	out := newSyncBuffer("")
	err := Run(t.Context(), RunConfig{
		Command: []string{"sh", "-c", `echo "$ALL_PROXY|$HTTP_PROXY|$https_proxy"`},
		Cluster: (&fakeCluster{objs: apiObjects()}).Cluster(cluster.Options{}), Session: fs, Stdio: Stdio{Out: out, Err: out},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "socks5h://me:p%40ss@127.0.0.1:1080|http://web:pw@127.0.0.1:3128|http://web:pw@127.0.0.1:3128\n"
	if got := out.String(); got != want {
		t.Errorf("run's proxy variables: got %q, want %q", got, want)
	}
}
