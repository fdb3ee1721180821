package e2e

// DNS after a crash (issue #12 item 7), resolv.conf backend (bt-ws has no systemd-resolved):
//
//	bt-ws: glibc / Go resolver → /etc/resolv.conf, rewritten by up: bridgetun's resolver first, then the
//	       original nameserver 10.89.0.1 (a test server on the host side of bt-ws's veth: outside.example.)
//	kill -9 the session: its resolver is gone, resolv.conf still names it; foreign names must still resolve.
//	The next up repairs (and says so); down after another kill -9 puts the original file back, byte for byte.

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// foreignLookupMax is how long a foreign name may take to resolve while bridgetun's resolver is dead (glibc
// skips an unreachable nameserver at once; one that times out would cost its whole timeout per lookup).
const foreignLookupMax = 3 * time.Second

func TestDNSAfterCrash(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	startUpstream(t)
	const wsResolv = "/etc/netns/" + WorkstationNS + "/resolv.conf"
	original, err := os.ReadFile(wsResolv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Never leave the shared workstation with a dead resolver, whatever failed.
		if now, _ := os.ReadFile(wsResolv); string(now) != string(original) {
			t.Logf("cleanup: restoring %s", wsResolv)
			_ = os.WriteFile(wsResolv, original, 0o644)
		}
	})
	frontendIP := clusterIP(t, ctx, c, "frontend")
	ws := newWorkstation(t, c, "dnscrash", false)
	up := []string{"up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream"}

	// resolves checks that name resolves to want in bt-ws with glibc (getent) and with Go's resolver
	// (testapp lookup), each within max.
	resolves := func(t *testing.T, when, name, want string, max time.Duration) {
		t.Helper()
		for _, argv := range [][]string{{"getent", "ahostsv4", name}, {c.Testapp, "lookup", "-timeout", "10s", name}} {
			start := time.Now()
			out, err := c.inWS(ctx, argv...)
			took := time.Since(start)
			if err != nil || !strings.Contains(out, want) {
				b, _ := os.ReadFile(wsResolv)
				t.Errorf("%s: `%s` in %s: got %q (%v) after %s, want %s; /etc/resolv.conf there:\n%s",
					when, strings.Join(argv, " "), WorkstationNS, strings.TrimSpace(out), err, took.Round(time.Millisecond), want, indent(string(b)))
				continue
			}
			if took > max {
				t.Errorf("%s: `%s` took %s, want < %s (every lookup of the machine would pay it)", when, strings.Join(argv, " "), took.Round(time.Millisecond), max)
			}
		}
	}
	// killSession kill -9s the running session and waits until it is gone.
	killSession := func(t *testing.T) {
		t.Helper()
		st, err := ws.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.DNSMode != "resolv.conf" {
			t.Fatalf("status: dns mode %q, want resolv.conf (the backend this test is about)", st.DNSMode)
		}
		if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := waitExited(ctx, st.PID, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(wsResolv)
		t.Logf("after kill -9 of session %d, %s reads:\n%s", st.PID, wsResolv, indent(string(b)))
	}

	t.Run("before up: the original resolver answers", func(t *testing.T) {
		resolves(t, "before up", "outside.example", "192.0.2.7", foreignLookupMax)
	})
	if t.Failed() {
		t.FailNow() // the harness's upstream does not work: nothing below would mean anything
	}
	if out, err := ws.run(ctx, up...); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("up:\n%s", indent(out))
	}
	t.Run("up: cluster and foreign names", func(t *testing.T) {
		resolves(t, "while up", "frontend."+SampleNamespace, frontendIP, foreignLookupMax)
		resolves(t, "while up", "outside.example", "192.0.2.7", foreignLookupMax)
	})

	t.Run("kill -9: foreign names still resolve", func(t *testing.T) {
		killSession(t)
		if _, err := c.inWS(ctx, "ip", "link", "show", "bt0"); err == nil {
			t.Logf("note: bt0 still exists after kill -9")
		}
		resolves(t, "after kill -9", "outside.example", "192.0.2.7", foreignLookupMax)
	})

	t.Run("the next up repairs", func(t *testing.T) {
		out, err := ws.run(ctx, up...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "repaired") {
			t.Errorf("up after kill -9 does not say what it repaired:\n%s", indent(out))
		}
		resolves(t, "after the repairing up", "frontend."+SampleNamespace, frontendIP, foreignLookupMax)
		resolves(t, "after the repairing up", "outside.example", "192.0.2.7", foreignLookupMax)
	})

	t.Run("down after another kill -9 restores resolv.conf", func(t *testing.T) {
		killSession(t)
		resolves(t, "after the second kill -9", "outside.example", "192.0.2.7", foreignLookupMax)
		out, err := ws.run(ctx, "down")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("down with no session:\n%s", indent(out))
		if now, _ := os.ReadFile(wsResolv); string(now) != string(original) {
			t.Errorf("%s after down differs from before up:\nbefore:\n%s\nafter:\n%s", wsResolv, indent(string(original)), indent(string(now)))
		}
		resolves(t, "after down", "outside.example", "192.0.2.7", foreignLookupMax)
	})
}
