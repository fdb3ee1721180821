package devflow

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bridgetun/bridgetun/session"
)

func TestProgress(t *testing.T) {
	for _, tty := range []bool{false, true} {
		var b bytes.Buffer
		clock := time.Unix(0, 0)
		p := &progress{w: &b, tty: tty, now: func() time.Time { return clock }}
		p.start, p.last = clock, clock
		clock = clock.Add(300 * time.Millisecond)
		p.done("environment of %s resolved", "api-7d9/app")
		p.info("volume settings (configMap) → /v/etc/api")
		p.waiting("waiting for %s", "`go run ./cmd/api`")
		clock = clock.Add(4100 * time.Millisecond)
		p.done("listens")
		p.event(session.InterceptEvent{Text: "1 of 2 replicas ready"})
		clock = clock.Add(75 * time.Second)
		p.event(session.InterceptEvent{Done: true, Text: "every pod runs the sidecar"})
		p.failed("refused")
		p.finished("routed")
		want := []string{
			"environment of api-7d9/app resolved 0.3s",
			"  volume settings (configMap) → /v/etc/api",
			"waiting for `go run ./cmd/api`",
			"listens 4.1s",
			"1 of 2 replicas ready",
			"every pod runs the sidecar 1m15s",
			"refused",
			"routed (total 1m19s)",
		}
		if tty {
			want = []string{
				"\x1b[32m✓\x1b[0m environment of api-7d9/app resolved \x1b[2m0.3s\x1b[0m",
				"  volume settings (configMap) → /v/etc/api",
				"\x1b[33m…\x1b[0m waiting for `go run ./cmd/api`",
				"\x1b[32m✓\x1b[0m listens \x1b[2m4.1s\x1b[0m",
				"\x1b[33m…\x1b[0m 1 of 2 replicas ready",
				"\x1b[32m✓\x1b[0m every pod runs the sidecar \x1b[2m1m15s\x1b[0m",
				"\x1b[31m✗\x1b[0m refused",
				"\x1b[32m✓\x1b[0m routed (total 1m19s)",
			}
		}
		if d := cmp.Diff(want, strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")); d != "" {
			t.Errorf("tty %v (-want +got):\n%s", tty, d)
		}
	}
	if isTerminal(&bytes.Buffer{}) {
		t.Error("a buffer is a terminal: got true, want false")
	}
}

func TestTailBuffer(t *testing.T) {
	tb := newTailBuffer(3)
	for _, s := range []string{"one\ntwo\n", "thr", "ee\r\nfour\nfi"} {
		_, _ = tb.Write([]byte(s))
	}
	if d := cmp.Diff([]string{"three", "four", "fi"}, tb.Lines()); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
}
