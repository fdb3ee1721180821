//go:build unix

package invoker

import (
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// Credential runs a child as the user.
func TestCredential(t *testing.T) {
	testkit.RequireRoot(t)
	u, err := FromEnv(env("SUDO_UID", strconv.Itoa(nobody)), 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("id", "-u")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential()}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != strconv.Itoa(nobody) {
		t.Errorf("child uid: got %s, want %d", got, nobody)
	}
}
