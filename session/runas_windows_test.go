package session

import "os/exec"

// runAs: Windows processes have no uid; cmd runs as this process's user
// (the peer-credential tests that need another uid are Linux-only anyway).
func runAs(*exec.Cmd, int) {}
