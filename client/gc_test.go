package client

import (
	"os"
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(orig) })

	t.Run("default", func(t *testing.T) {
		t.Setenv("GOGC", "") // restored after the test
		os.Unsetenv("GOGC")
		debug.SetGCPercent(100)
		TuneGC()
		if got := debug.SetGCPercent(100); got != clientGCPercent {
			t.Fatalf("GC percent %d after TuneGC, want %d", got, clientGCPercent)
		}
	})
	t.Run("GOGC set", func(t *testing.T) {
		t.Setenv("GOGC", "100")
		debug.SetGCPercent(100)
		TuneGC()
		if got := debug.SetGCPercent(100); got != 100 {
			t.Fatalf("GC percent %d after TuneGC with GOGC=100 set, want it left at 100", got)
		}
	})
}
