package devflow

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// writePrivateFile writes data to name for its owner alone: created 0600,
// an existing file narrowed to 0600 before anything is written to it, and
// never through a symlink (one at name is refused, not followed or
// replaced, since someone else may have put it there). Only a regular
// file is written.
func writePrivateFile(name string, data []byte) error {
	if fi, err := os.Lstat(name); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink: refusing to write secrets through it (remove it, or name another file)", name)
	}
	f, err := openNoFollow(name, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("%s is a symlink: refusing to write secrets through it (remove it, or name another file)", name)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s)", name, fi.Mode().Type())
	}
	if fi.Mode().Perm() != 0o600 {
		if err := f.Chmod(0o600); err != nil {
			return fmt.Errorf("make %s private (0600): %w", name, err)
		}
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Close()
}
