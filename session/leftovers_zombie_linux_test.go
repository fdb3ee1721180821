package session

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
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
	deadline := time.Now().Add(10 * time.Second)
	for !zombie(pid) { // polling /proc until the kernel has marked it
		if time.Now().After(deadline) {
			t.Fatalf("child %d never became a zombie", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if processAlive(pid) {
		t.Errorf("zombie %d: processAlive = true, want false", pid)
	}
	_ = cmd.Wait()
	if processAlive(pid) {
		t.Errorf("reaped %d: processAlive = true, want false", pid)
	}
}
