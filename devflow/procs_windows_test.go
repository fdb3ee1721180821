package devflow

import (
	"errors"

	"golang.org/x/sys/windows"
)

// mkfifo: Windows has no FIFOs (the tests that gate on one fail there).
func mkfifo(string) error { return errors.ErrUnsupported }

// processGone reports whether no process pid can be opened.
func processGone(pid int) bool {
	h, err := windows.OpenProcess(windows.PROCESS_QUERY_LIMITED_INFORMATION, false, uint32(pid))
	if err != nil {
		return !errors.Is(err, windows.ERROR_ACCESS_DENIED)
	}
	windows.CloseHandle(h)
	return false
}
