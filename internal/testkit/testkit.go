// Package testkit is the one set of test helpers the module shares: polling
// with a deadline instead of sleeps, a logger that writes to the test's
// output, a buffer safe for concurrent writers, and the root check that
// fails instead of skipping under CI.
package testkit

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
)

// pollEvery is how often WaitFor and Eventually look again.
const pollEvery = 10 * time.Millisecond

// WaitFor polls cond until it holds or timeout passes; then it fails the
// test naming what it waited for.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
			return
		}
		time.Sleep(pollEvery) // polling with a deadline
	}
}

// Eventually polls f until it returns nil or timeout passes; then it fails
// the test with f's last error.
func Eventually(tb testing.TB, timeout time.Duration, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("still failing after %s: %v", timeout, err)
			return
		}
		time.Sleep(pollEvery) // polling with a deadline
	}
}

// WaitGoroutines polls until at most max goroutines run (take max from
// runtime.NumGoroutine before the test starts any); then it fails the test
// with every goroutine's stack, the leak among them.
func WaitGoroutines(tb testing.TB, timeout time.Duration, max int) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := runtime.NumGoroutine()
		if n <= max {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			tb.Fatalf("goroutines: got %d after %s, want <= %d\n%s", n, timeout, max, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(pollEvery) // polling with a deadline
	}
}

// Logger logs at debug level to the test's output until the test's
// cleanups run; later lines (a library goroutine saying it stopped, after
// Close returned) are dropped, since writing to a finished test's output is
// a data race the race detector reports.
func Logger(tb testing.TB) *slog.Logger {
	w := &testWriter{out: tb.Output()}
	tb.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter forwards to a test's output while the test runs.
type testWriter struct {
	mu   sync.Mutex
	out  io.Writer
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	return w.out.Write(p)
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// LockedBuffer is a bytes.Buffer that several goroutines may write while
// the test reads it.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// RequireRoot skips a test that needs root when not root — except when CI
// is set: there every test must run, so it fails instead.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	requireRoot(tb, os.Geteuid())
}

// requireRoot is RequireRoot with the effective uid pulled out for testing.
func requireRoot(tb testing.TB, euid int) {
	tb.Helper()
	if euid != 0 {
		SkipUnlessCI(tb, "needs root")
	}
}

// SkipUnlessCI skips with the reason on a developer's machine; with CI set
// it fails, because CI promises to run every test.
func SkipUnlessCI(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatalf(format+"; CI is set, so this must not skip", args...)
	}
	tb.Skipf(format, args...)
}
