package vscode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// fileWrite is one file Write may write.
type fileWrite struct {
	path    string
	data    []byte
	old     []byte // what it held (merged files)
	existed bool   // merged files: it was there
	changed bool   // merged files: data differs from old
	keep    bool   // created only when missing, never rewritten
	private bool   // created 0600 (the env file holds the pod's Secrets)
}

// apply writes the plan's files in order; when one fails, those written
// before it get their old content back (or are removed again) and the
// error names the file.
func apply(plan []fileWrite) ([]Change, error) {
	var done []fileWrite
	undo := func() {
		for i := len(done) - 1; i >= 0; i-- {
			f := done[i]
			if f.existed {
				_ = writeAtomic(f.path, f.old)
			} else {
				_ = os.Remove(f.path)
			}
		}
	}
	var changes []Change
	for _, f := range plan {
		if f.keep {
			created, err := createIfMissing(f)
			if err != nil {
				undo()
				return nil, err
			}
			if created {
				done = append(done, f)
			}
			continue
		}
		changes = append(changes, Change{Path: f.path, Written: f.changed})
		if !f.changed {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
			undo()
			return nil, fmt.Errorf("vscode: %w", err)
		}
		if err := writeAtomic(f.path, f.data); err != nil {
			undo()
			return nil, fmt.Errorf("vscode: write %s: %w", f.path, err)
		}
		done = append(done, f)
	}
	return changes, nil
}

// createIfMissing creates f (and its directory) unless something is
// there already; a symlink there counts as something and is left alone.
func createIfMissing(f fileWrite) (bool, error) {
	if _, err := os.Lstat(f.path); err == nil {
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("vscode: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(f.path), 0o755); err != nil {
		return false, fmt.Errorf("vscode: %w", err)
	}
	mode := fs.FileMode(0o644)
	if f.private {
		mode = 0o600
	}
	fd, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return false, fmt.Errorf("vscode: %w", err)
	}
	if _, err := fd.Write(f.data); err != nil {
		fd.Close()
		os.Remove(f.path)
		return false, fmt.Errorf("vscode: write %s: %w", f.path, err)
	}
	return true, fd.Close()
}

// writeAtomic replaces path with data through a temporary file in the
// same directory, keeping an existing file's mode (new files: 0644).
func writeAtomic(path string, data []byte) error {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real // a linked tasks.json stays linked
	}
	mode := fs.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone already after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
