// Package testkit is the one set of test helpers the module shares: polling
// with a deadline instead of sleeps, a logger that writes to the test's
// output, a buffer safe for concurrent writers, and the root check that
// fails instead of skipping under CI.
package testkit

import (
	"bytes"
	"log/slog"
	"os"
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

// Logger logs at debug level to the test's output.
func Logger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
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
	if os.Geteuid() != 0 {
		SkipUnlessCI(tb, "needs root")
	}
}

// SkipUnlessCI skips with the reason on a developer's machine; with CI set
// it fails, because CI promises to run every test.
func SkipUnlessCI(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv("CI") != "" {
		tb.Fatalf("CI is set, so this test must run, but: "+format, args...)
	}
	tb.Skipf(format, args...)
}
