package iptables

import (
	"os/exec"
	"strings"
)

// Exec runs the real tools.
type Exec struct{}

// Run implements Runner.
func (Exec) Run(name string, args []string, stdin string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
