package session

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// TestProcessAliveZombie: a killed child that its parent (this test) has not
// reaped yet is a zombie, and must count as gone.
func TestProcessAliveZombie(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !processAlive(pid) {
		t.Fatalf("running child %d: processAlive = false, want true", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the child to become a zombie", func() bool { return zombie(pid) })
	if processAlive(pid) {
		t.Errorf("zombie %d: processAlive = true, want false", pid)
	}
	_ = cmd.Wait()
	if processAlive(pid) {
		t.Errorf("reaped %d: processAlive = true, want false", pid)
	}
}
