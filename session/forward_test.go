package session

import (
	"strings"
	"testing"
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
