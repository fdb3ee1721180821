package dnsproxy

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"golang.org/x/sys/unix"
)

// inMountNS runs fn on a locked OS thread inside a private mount
// namespace; the thread is discarded afterwards, so the host's mounts
// never change.
func inMountNS(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_FS); err != nil {
			errc <- &skipError{err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
			errc <- &skipError{err}
			return
		}
		errc <- fn()
	}()
	err := <-errc
	if se, ok := errors.AsType[*skipError](err); ok {
		testkit.SkipUnlessCI(t, "no private mount namespace (needs root): %v", se.err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

type skipError struct{ err error }

func (e *skipError) Error() string { return e.err.Error() }

// TestResolvConfBindMounted proves the EBUSY fallback the way `ip netns
// exec` sets things up:
//
//	private mount ns:  /etc/resolv.conf  <-bind-  $TMP/netns-resolv.conf
//
// rename(2) over a mount point fails with EBUSY, so Apply and Restore
// must rewrite the file in place, and the bind source carries the edits.
func TestResolvConfBindMounted(t *testing.T) {
	testkit.RequireRoot(t) // mount(2)
	dir := t.TempDir()
	src := filepath.Join(dir, "netns-resolv.conf")
	if err := os.WriteFile(src, []byte(origResolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	d := Detect{ResolvConfPath: "/etc/resolv.conf", StateDir: filepath.Join(dir, "state"), ResolvedAvailable: func() bool { return false }}
	var applied, restored string
	inMountNS(t, func() error {
		if err := unix.Mount(src, d.ResolvConfPath, "", unix.MS_BIND, ""); err != nil {
			return &skipError{err}
		}
		if err := os.Rename(src, d.ResolvConfPath); !errors.Is(err, syscall.EBUSY) {
			return errors.New("rename over a bind mount did not fail with EBUSY: " + errString(err))
		}
		c, err := NewOSConfigurator(d, testkit.Logger(t))
		if err != nil {
			return err
		}
		if err := c.Apply(testOSConfig); err != nil {
			return err
		}
		b, _ := os.ReadFile(d.ResolvConfPath)
		applied = string(b)
		if err := c.Restore(); err != nil {
			return err
		}
		b, _ = os.ReadFile(d.ResolvConfPath)
		restored = string(b)
		return nil
	})
	if !strings.Contains(applied, "nameserver 198.19.3.4") {
		t.Errorf("applied resolv.conf:\n%s\nwant our nameserver", applied)
	}
	if restored != origResolvConf {
		t.Errorf("restored resolv.conf:\n%s\nwant the original", restored)
	}
	if got := readFile(t, src); got != origResolvConf {
		t.Errorf("bind source after restore:\n%s\nwant the original", got)
	}
	if matches, _ := filepath.Glob("/etc/.resolv.conf.bridgetun-*"); len(matches) > 0 {
		t.Errorf("temp files left in /etc: %v", matches)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
