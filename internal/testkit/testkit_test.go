package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that records Fatalf/Skipf instead of ending
// the test; the helpers call it from the test's own goroutine.
type recorder struct {
	testing.TB
	fatal, skip string
	out         bytes.Buffer
}

func (r *recorder) Output() io.Writer { return &r.out }
func (r *recorder) Helper()           {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls f with a recorder on its own goroutine (Goexit ends it there).
func run(t *testing.T, f func(tb testing.TB)) *recorder {
	r := &recorder{TB: t}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f(r) }()
	wg.Wait()
	return r
}

func TestWaitFor(t *testing.T) {
	n := 0
	if r := run(t, func(tb testing.TB) { WaitFor(tb, time.Second, "three looks", func() bool { n++; return n == 3 }) }); r.fatal != "" {
		t.Errorf("a condition that comes true failed: %s", r.fatal)
	}
	r := run(t, func(tb testing.TB) { WaitFor(tb, 30*time.Millisecond, "never", func() bool { return false }) })
	if r.fatal != "timed out after 30ms waiting for never" {
		t.Errorf("got %q, want the timeout naming what it waited for", r.fatal)
	}
}

func TestEventually(t *testing.T) {
	r := run(t, func(tb testing.TB) {
		Eventually(tb, 30*time.Millisecond, func() error { return errors.New("still 3 pods") })
	})
	if r.fatal != "still failing after 30ms: still 3 pods" {
		t.Errorf("got %q, want the last error", r.fatal)
	}
}

func TestSkipUnlessCI(t *testing.T) {
	t.Setenv("CI", "")
	if r := run(t, func(tb testing.TB) { SkipUnlessCI(tb, "no %s", "dbus") }); r.skip != "no dbus" || r.fatal != "" {
		t.Errorf("without CI: got skip %q fatal %q, want a skip", r.skip, r.fatal)
	}
	t.Setenv("CI", "1")
	if r := run(t, func(tb testing.TB) { SkipUnlessCI(tb, "no %s", "dbus") }); r.fatal == "" || r.skip != "" {
		t.Errorf("with CI: got skip %q fatal %q, want a failure", r.skip, r.fatal)
	}
}

func TestRequireRoot(t *testing.T) {
	t.Setenv("CI", "")
	if r := run(t, func(tb testing.TB) { requireRoot(tb, 0) }); r.skip != "" || r.fatal != "" {
		t.Errorf("as root: got skip %q fatal %q, want neither", r.skip, r.fatal)
	}
	if r := run(t, func(tb testing.TB) { requireRoot(tb, 1000) }); r.skip != "needs root" || r.fatal != "" {
		t.Errorf("not root, no CI: got skip %q fatal %q, want a skip", r.skip, r.fatal)
	}
	t.Setenv("CI", "1")
	if r := run(t, func(tb testing.TB) { requireRoot(tb, 1000) }); r.fatal != "needs root; CI is set, so this must not skip" || r.skip != "" {
		t.Errorf("not root, CI: got skip %q fatal %q, want the failure", r.skip, r.fatal)
	}
}

func TestWaitGoroutines(t *testing.T) {
	max := runtime.NumGoroutine() + 1 // run's goroutine
	stop := make(chan struct{})
	for range 3 {
		go leaked(stop)
	}
	r := run(t, func(tb testing.TB) { WaitGoroutines(tb, 30*time.Millisecond, max) })
	if !strings.HasPrefix(r.fatal, "goroutines: got ") || !strings.Contains(r.fatal, fmt.Sprintf("after 30ms, want <= %d\n", max)) || !strings.Contains(r.fatal, "testkit.leaked(") {
		t.Errorf("with a leak: got %.300q, want the count and the leaked goroutines' stacks", r.fatal)
	}
	close(stop)
	if r := run(t, func(tb testing.TB) { WaitGoroutines(tb, 5*time.Second, max) }); r.fatal != "" {
		t.Errorf("after the goroutines ended: %.300s", r.fatal)
	}
}

func leaked(stop chan struct{}) { <-stop }

func TestLogger(t *testing.T) {
	r := &recorder{TB: t}
	Logger(r).Debug("hello", "err", errors.New("boom"))
	if got := r.out.String(); !strings.Contains(got, `level=DEBUG msg=hello err=boom`) {
		t.Errorf("got %q, want a debug line in the test's output", got)
	}
}

func TestLockedBuffer(t *testing.T) {
	var b LockedBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); fmt.Fprint(&b, "x") }()
	}
	wg.Wait()
	if got := b.String(); got != "xxxxxxxx" {
		t.Errorf("got %q, want 8 x", got)
	}
}

// TestLoggerAfterTheTest: a line logged once the test's cleanups ran is
// dropped instead of racing the finished test's output.
func TestLoggerAfterTheTest(t *testing.T) {
	var log *slog.Logger
	t.Run("inner", func(t *testing.T) { log = Logger(t) })
	log.Info("after the test") // must neither panic nor race
}
