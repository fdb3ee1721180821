package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/session"
)

// TestPrintInterceptState: status shows each intercept's real state and
// its grace; a lost one never reads as active.
func TestPrintInterceptState(t *testing.T) {
	since := time.Date(2026, 12, 3, 9, 0, 0, 0, time.Local)
	base := session.InterceptInfo{Service: "api", Workload: "Deployment/api", ContainerPort: 8080, LocalPort: 8080,
		Since: since, Grace: 15 * time.Minute, LocalURL: "http://127.0.0.1:4000"}
	for _, tc := range []struct {
		state, reason string
		want          string
	}{
		{session.InterceptActive, "", "            active\n"},
		{"", "", "            active\n"},
		{session.InterceptReconnecting, "gateway unreachable: dial tcp: refused", "            reconnecting since 09:05:00 (gateway unreachable: dial tcp: refused)\n"},
		{session.InterceptLost, "this machine was away 17m (grace 15m); the gateway restored deployment/api; start again with `bridgetun intercept api --port 8080`",
			"            lost: this machine was away 17m (grace 15m); the gateway restored deployment/api; start again with `bridgetun intercept api --port 8080`\n"},
	} {
		it := base
		it.State, it.StateReason, it.StateSince = tc.state, tc.reason, since.Add(5*time.Minute)
		var b bytes.Buffer
		printIntercept(&b, it)
		got := b.String()
		if !strings.HasPrefix(got, "intercept:  api (Deployment/api, port 8080) → 127.0.0.1:8080, all traffic, since 09:00:00, grace 15m\n") {
			t.Errorf("state %q: first line: got %q", tc.state, got)
		}
		if lines := strings.SplitAfter(got, "\n"); len(lines) < 2 || lines[1] != tc.want {
			t.Errorf("state %q: got %q, want second line %q", tc.state, got, tc.want)
		}
		if url := strings.Contains(got, "local URL"); url == (tc.state == session.InterceptLost) {
			t.Errorf("state %q: local URL shown %v", tc.state, url)
		}
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{45 * time.Second: "45s", 15 * time.Minute: "15m", 90 * time.Minute: "1h30m", 2 * time.Hour: "2h", 40 * time.Second: "40s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("%s: got %q, want %q", d, got, want)
		}
	}
}
