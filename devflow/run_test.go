package devflow

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name      string
		command   []string
		service   string
		container string
		opts      cluster.Options
		statusErr error
		wantCode  int
		wantErr   string
		wantOut   string
		wantOpts  []cluster.Options // what Connect was given
	}{
		{name: "exit 0", command: []string{"sh", "-c", "exit 0"}},
		{name: "exit code passed on", command: []string{"sh", "-c", "exit 3"}, wantCode: 3},
		{name: "killed by a signal", command: []string{"sh", "-c", "kill -9 $$"}, wantCode: -1},
		{name: "session environment", command: []string{"sh", "-c", `echo "$A|$GRPC_DNS_RESOLVER|$HTTP_PROXY"`}, wantOut: "|native|http://127.0.0.1:1081\n"},
		{name: "the Service pod's first container", service: "api", command: []string{"sh", "-c", `echo "$A|$B|$GRPC_DNS_RESOLVER"`},
			wantOut: "1|1-x|native\n", wantOpts: []cluster.Options{{Context: "kind-dev", Namespace: "ns"}}},
		{name: "a named container", service: "api", container: "sidecar", command: []string{"sh", "-c", `echo "$A|$B"`},
			wantOut: "2|\n", wantOpts: []cluster.Options{{Context: "kind-dev", Namespace: "ns"}}},
		{name: "flags beat the session", service: "api", opts: cluster.Options{Kubeconfig: "kc", Context: "kind-dev", Namespace: "other"},
			command: []string{"true"}, wantErr: "service other/api", wantOpts: []cluster.Options{{Kubeconfig: "kc", Context: "kind-dev", Namespace: "other"}}},
		{name: "another context is refused", service: "api", opts: cluster.Options{Context: "prod"}, command: []string{"sh", "-c", "echo ran"},
			wantErr: "run: the session is connected to context \"kind-dev\", not \"prod\""},
		{name: "--namespace without --service is refused", opts: cluster.Options{Namespace: "other"}, command: []string{"sh", "-c", "echo ran"},
			wantErr: "run: --namespace says where --service is looked up"},
		{name: "--container without --service is refused", container: "app", command: []string{"sh", "-c", "echo ran"},
			wantErr: "run: --container names a container of --service's pod"},
		{name: "no such Service", service: "web", command: []string{"true"}, wantErr: "service ns/web", wantOpts: []cluster.Options{{Context: "kind-dev", Namespace: "ns"}}},
		{name: "command not found", command: []string{"/nonexistent/bridgetun-cmd"}, wantErr: "run /nonexistent/bridgetun-cmd"},
		{name: "no session", command: []string{"sh", "-c", "echo ran"}, statusErr: session.ErrNotRunning, wantErr: "not up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &fakeSession{status: session.Status{Context: "kind-dev", Namespace: "ns", HTTPProxy: "127.0.0.1:1081"}}
			fs.statusErr = tc.statusErr
			fc := &fakeCluster{objs: apiObjects()}
			out := newSyncBuffer("")
			err := Run(t.Context(), RunConfig{
				Command: tc.command, Service: tc.service, Container: tc.container,
				Cluster: fc.Cluster(tc.opts), Session: fs, Stdio: Stdio{Out: out, Err: out},
			})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %v, want an error containing %q", err, tc.wantErr)
				}
			} else if got := exitCode(t, err); got != tc.wantCode {
				t.Errorf("exit code: got %d, want %d", got, tc.wantCode)
			}
			if got := out.String(); got != tc.wantOut {
				t.Errorf("output: got %q, want %q", got, tc.wantOut)
			}
			if d := cmp.Diff(tc.wantOpts, fc.opts); d != "" {
				t.Errorf("cluster options (-want +got):\n%s", d)
			}
		})
	}
}
