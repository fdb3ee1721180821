package session

import (
	"errors"

	"golang.org/x/sys/windows"
)

// processAlive reports whether pid runs: a process we may not open
// (another user's) runs; one we may open runs until it has an exit code.
func processAlive(pid int) bool {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return errors.Is(err, windows.ERROR_ACCESS_DENIED)
	}
	defer windows.CloseHandle(h)
	var code uint32
	if err := windows.GetExitCodeProcess(h, &code); err != nil {
		return true
	}
	return code == stillActive
}

// stillActive is STILL_ACTIVE, GetExitCodeProcess's code for a running process.
const stillActive = 259
