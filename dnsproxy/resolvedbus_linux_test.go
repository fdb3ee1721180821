package dnsproxy

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/godbus/dbus/v5"
	"github.com/google/go-cmp/cmp"
)

// The signatures systemd-resolved's Manager interface declares.
func TestResolvedBusSignatures(t *testing.T) {
	tests := []struct {
		method string
		args   []any
		want   string
	}{
		{"SetLinkDNS", []any{int32(0), []resolvedLinkAddr{}}, "ia(iay)"},
		{"SetLinkDomains", []any{int32(0), []resolvedLinkDomain{}}, "ia(sb)"},
		{"SetLinkDefaultRoute", []any{int32(0), false}, "ib"},
		{"RevertLink", []any{int32(0)}, "i"},
	}
	for _, tt := range tests {
		if got := dbus.SignatureOf(tt.args...).String(); got != tt.want {
			t.Errorf("%s signature %q, want %q", tt.method, got, tt.want)
		}
	}
}

// fakeResolve1 plays org.freedesktop.resolve1 on a private bus.
type fakeResolve1 struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeResolve1) rec(s string) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	return nil
}
func (f *fakeResolve1) SetLinkDNS(i int32, a []resolvedLinkAddr) *dbus.Error {
	var s []string
	for _, x := range a {
		ip, _ := netip.AddrFromSlice(x.Address)
		s = append(s, fmt.Sprintf("%d/%s", x.Family, ip))
	}
	return f.rec(fmt.Sprintf("SetLinkDNS %d %v", i, s))
}
func (f *fakeResolve1) SetLinkDomains(i int32, d []resolvedLinkDomain) *dbus.Error {
	return f.rec(fmt.Sprintf("SetLinkDomains %d %v", i, d))
}
func (f *fakeResolve1) SetLinkDefaultRoute(i int32, v bool) *dbus.Error {
	return f.rec(fmt.Sprintf("SetLinkDefaultRoute %d %v", i, v))
}
func (f *fakeResolve1) RevertLink(i int32) *dbus.Error { return f.rec(fmt.Sprintf("RevertLink %d", i)) }

// TestResolvedOverDBus runs the godbus ResolvedBus against a fake resolve1
// service on a private dbus-daemon (no systemd here, so no real resolved):
//
//	test (client conn) --D-Bus--> dbus-daemon --D-Bus--> fakeResolve1 (server conn)
func TestResolvedOverDBus(t *testing.T) {
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		testkit.SkipUnlessCI(t, "no dbus-daemon (make test installs it)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "bus")
	conf := filepath.Join(dir, "bus.conf")
	os.WriteFile(conf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=`+sock+`</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/><allow own="*"/><allow user="*"/></policy></busconfig>`), 0o644)
	cmd := exec.Command(daemon, "--config-file="+conf, "--nofork", "--print-address")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n') // printed once listening
	if err != nil {
		t.Fatalf("dbus-daemon address: %v", err)
	}
	addr = strings.TrimSpace(addr)

	srv, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fake := &fakeResolve1{}
	if err := srv.Export(fake, resolvedPath, resolvedManager); err != nil {
		t.Fatal(err)
	}
	if reply, err := srv.RequestName(resolvedName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	cli, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()

	c := newResolvedConfigurator(NewResolvedBus(cli), func(string) (int, error) { return 7, nil }, testkit.Logger(t))
	if err := c.Apply(testOSConfig); err != nil {
		t.Fatal(err)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"SetLinkDNS 7 [2/198.19.3.4]",
		"SetLinkDomains 7 [{bt.svc.cluster.local false} {svc.cluster.local false} {cluster.local false} {svc true} {pod true}]",
		"SetLinkDefaultRoute 7 false",
		"RevertLink 7",
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if diff := cmp.Diff(want, fake.calls); diff != "" {
		t.Errorf("calls seen by resolve1 (-want +got):\n%s", diff)
	}
}
