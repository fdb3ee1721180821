package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/miekg/dns"
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

// TestResolvConfForeignNamesAfterKill proves with glibc (getent) what a
// kill -9 of the session leaves: our rewritten resolv.conf naming a
// resolver that is gone. The original nameserver after ours still answers
// foreign names, until the next start or `down` repairs the file.
//
//	private mount ns: /etc/resolv.conf <-bind- rewritten file
//	  nameserver 127.0.0.153   (ours, dead: nothing listens)
//	  nameserver 127.0.0.77    (the original: a test server on loopback)
func TestResolvConfForeignNamesAfterKill(t *testing.T) {
	testkit.RequireRoot(t) // mount(2), port 53
	getent, err := exec.LookPath("getent")
	if err != nil {
		t.Fatalf("getent: %v", err)
	}
	const original = "127.0.0.77"
	startAnswering(t, original+":53", "outside.example.", "192.0.2.7")
	dir := t.TempDir()
	d := Detect{ResolvConfPath: filepath.Join(dir, "resolv.conf"), StateDir: filepath.Join(dir, "state"), ResolvedAvailable: func() bool { return false }}
	if err := os.WriteFile(d.ResolvConfPath, []byte("nameserver "+original+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := NewOSConfigurator(d, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(OSConfig{Nameserver: "127.0.0.153", SearchDomains: SearchDomains("bt", "cluster.local")}); err != nil {
		t.Fatal(err)
	}
	// No Restore: the process "died". The file stays as Apply wrote it.
	var out []byte
	inMountNS(t, func() error {
		if err := unix.Mount(d.ResolvConfPath, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
			return &skipError{err}
		}
		out, err = exec.Command(getent, "ahostsv4", "outside.example").CombinedOutput()
		if err != nil {
			b, _ := os.ReadFile("/etc/resolv.conf")
			return fmt.Errorf("getent ahostsv4 outside.example with our resolver dead: %v (%s); resolv.conf:\n%s", err, out, b)
		}
		return nil
	})
	if !strings.Contains(string(out), "192.0.2.7") {
		t.Errorf("getent: %q, want 192.0.2.7 from the original nameserver", out)
	}
	if repaired, err := RepairResolvConf(d); err != nil || !repaired {
		t.Errorf("RepairResolvConf = %v, %v; want the original back", repaired, err)
	}
}

// startAnswering serves A name → ip on addr (UDP) until the test ends,
// NXDOMAIN for anything else.
func startAnswering(t *testing.T, addr, name, ip string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; strings.EqualFold(q.Name, name) && q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(name + " 30 IN A " + ip)
			m.Answer = append(m.Answer, rr)
		} else if !strings.EqualFold(q.Name, name) {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
}
