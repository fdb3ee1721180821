package e2e

// A developer's day (issue #12), as the unprivileged user bridgetun-e2e with a sudo rule for bridgetun and
// the kubeconfig in ~/.kube/config:
//
//	bt-ws, as bridgetun-e2e:  $ sudo bridgetun up --background ...      root: TUN bt0, routes, resolv.conf
//	                          $ bridgetun status / intercept / leave / down    no sudo: the socket is theirs
//	                          $ bridgetun intercept api --port 18095 -- testapp http -listen 127.0.0.1:18095
//	                                 CMD: their uid, the pod's environment, env file theirs and 0600
//	host: caller loop ─► NodePort 30080 ─► frontend ─► api Service ─► sidecar ─► gateway ══ tunnel ══► bt-ws CMD
//
// Then a laptop sleep longer than the lease: every client process (session, intercept, CMD) is frozen with
// SIGSTOP for 60 s while the in-cluster callers keep calling (the sidecars pass through), SIGCONT, and the
// intercept must route here again within 10 s by itself. leave and down without sudo; nothing left behind.
// Bad input: up without sudo, an unreadable ~/.kube/config, another user's status, a sleep past the grace.
// Last, the same user with a login session's runtime dir (/run/user/UID), which sudo does not pass on.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/session"
)

const (
	devLocalPort = "18095"          // where the developer's CMD listens
	devService   = "api-dev"        // SERVICE_NAME of the developer's CMD: the api hop names it when routed here
	freezeFor    = 60 * time.Second // the "sleep": longer than the 15 s lease
	backWithin   = 10 * time.Second // after wake, the intercept routes here again within this
)

func TestDeveloper(t *testing.T) {
	c := Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	c.DumpOnFailure(t, SampleNamespace)
	if err := c.DeploySample(ctx); err != nil {
		t.Fatal(err)
	}
	d := NewDeveloper(t, c)
	const wsResolv = "/etc/netns/" + WorkstationNS + "/resolv.conf"
	resolvBefore := fileSum(t, wsResolv)
	if _, ann := apiTemplate(t, ctx, c); ann["bridgetun.io/original-template"] != "" {
		t.Fatalf("api is patched before the test began (a leftover of an earlier run): `bridgetun uninstall --all -n %s` restores it", SampleNamespace)
	}
	before, _ := apiTemplate(t, ctx, c)
	areas := d.fileAreas()
	d.clearRootLeftovers(t, areas)
	snap := snapshotFiles(areas)
	started := time.Now()

	// must runs a step the later ones need: if it fails, the test stops there.
	must := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	var sess devSession
	t.Cleanup(func() { sess.teardown(t, d) })

	must("before: no session of the developer", func(t *testing.T) {
		out, err := d.Run(ctx, false, "bridgetun", "status")
		if err == nil {
			t.Fatalf("%s answered before `up`: a session of an earlier run is still up:\n%s", d.Show(false, "bridgetun", "status"), indent(out))
		}
		if !strings.Contains(out, "not up") {
			t.Errorf("%s without a session: got\n%s\nwant it to say it is not up", d.Show(false, "bridgetun", "status"), indent(out))
		}
	})

	t.Run("up without sudo: a one-line hint", func(t *testing.T) {
		argv := []string{"bridgetun", "up", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream"}
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := d.Run(rctx, false, argv...)
		if err == nil {
			t.Fatalf("%s succeeded without root, want the hint to use sudo or --netstack:\n%s", d.Show(false, argv...), indent(out))
		}
		t.Logf("%s printed:\n%s", d.Show(false, argv...), indent(out))
		lines := nonEmptyLines(out)
		if len(lines) != 1 || !strings.Contains(out, "sudo") || !strings.Contains(out, "--netstack") {
			t.Errorf("%s printed\n%s\nwant one line naming sudo and --netstack", d.Show(false, argv...), indent(out))
		}
		if out, err := c.inWS(ctx, "ip", "link", "show", "bt0"); err == nil {
			t.Errorf("TUN bt0 exists after the refused up: %s", out)
		}
	})

	t.Run("sudo up with an unreadable kubeconfig: one line naming it", func(t *testing.T) {
		kc := filepath.Join(d.Home, ".kube", "config")
		if err := os.Chmod(kc, 0o000); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(kc, 0o600)
		argv := d.Sudo("up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream")
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		out, err := d.Run(rctx, false, argv...)
		t.Logf("%s printed:\n%s", d.Show(false, argv...), indent(out))
		if err == nil {
			t.Fatalf("%s succeeded with ~/.kube/config unreadable by %s: root read it for them", d.Show(false, argv...), d.Name)
		}
		if lines := nonEmptyLines(out); len(lines) != 1 || !strings.Contains(out, kc) || !strings.Contains(out, d.Name) {
			t.Errorf("%s: want one line naming %s and %s", d.Show(false, argv...), kc, d.Name)
		}
		if out, err := c.inWS(ctx, "ip", "link", "show", "bt0"); err == nil {
			t.Errorf("TUN bt0 exists after the refused up: %s", out)
		}
	})

	must("sudo bridgetun up, in a terminal", func(t *testing.T) {
		argv := d.Sudo("up", "--background", "--upgrade", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream")
		out, err := d.Run(ctx, true, argv...)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s printed:\n%s", d.Show(true, argv...), indent(out))
		if !strings.Contains(out, "connected in") {
			t.Errorf("%s: no \"connected in\" line", d.Show(true, argv...))
		}
	})

	must("status without sudo", func(t *testing.T) {
		for _, tty := range []bool{false, true} {
			out, err := d.Run(ctx, tty, "bridgetun", "status")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "state:      connected") || !strings.Contains(out, DeveloperContext) {
				t.Errorf("%s printed\n%s\nwant state connected and context %q (their ~/.kube/config)", d.Show(tty, "bridgetun", "status"), indent(out), DeveloperContext)
			}
		}
		st, err := d.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sess.pid = st.PID
		if st.State != "connected" || st.Mode != "tun" || st.Context != DeveloperContext || st.DNSMode != "resolv.conf" {
			t.Errorf("status --json: state %q mode %q context %q dns %q, want connected, tun, %q (their kubeconfig), resolv.conf",
				st.State, st.Mode, st.Context, st.DNSMode, DeveloperContext)
		}
		if uid := procUID(st.PID); uid != 0 {
			t.Errorf("session process %d runs as uid %d, want root (it holds the TUN device)", st.PID, uid)
		}
		// The socket that answered is theirs.
		var socks, theirs []string
		for _, f := range listFiles(areas) {
			if f.mode&fs.ModeSocket != 0 {
				socks = append(socks, f.String())
				if f.uid == d.UID && f.mode.Perm()&0o077 == 0 {
					theirs = append(theirs, f.path)
				}
			}
		}
		if len(theirs) == 0 {
			t.Errorf("no control socket owned by %s (uid %d, owner-only) under %v; sockets there: %v", d.Name, d.UID, areas.user, socks)
		}
	})

	t.Run("another user's status is refused, naming the owner", func(t *testing.T) {
		argv := []string{"netns", "exec", WorkstationNS, "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", d.Bin, "status"}
		cmd := exec.CommandContext(ctx, "ip", argv...)
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent", "USER=nobody", "LOGNAME=nobody"}
		b, err := cmd.CombinedOutput()
		out := string(b)
		if err == nil || !strings.Contains(out, d.Name) || len(nonEmptyLines(out)) != 1 {
			t.Errorf("`bridgetun status` as nobody while %s's session runs: %v\n%s\nwant one line refusing and naming %s", d.Name, err, indent(out), d.Name)
		}
	})

	t.Run("a Service by name, without sudo", func(t *testing.T) {
		for _, argv := range [][]string{{c.Testapp, "get", "-timeout", "10s", "http://frontend/"}, {"getent", "ahostsv4", "frontend." + SampleNamespace}} {
			out, err := d.Run(ctx, false, argv...)
			if err != nil {
				t.Error(err)
				continue
			}
			if argv[0] == c.Testapp && !strings.Contains(compactJSON(out), `"service":"frontend"`) {
				t.Errorf("%s: got %.300s, want the frontend's answer", d.Show(false, argv...), out)
			}
			if argv[0] == "getent" && !strings.Contains(out, clusterIP(t, ctx, c, "frontend")) {
				t.Errorf("%s: got %q, want the frontend's ClusterIP", d.Show(false, argv...), out)
			}
		}
	})

	load := startCallers(20)
	defer load.report(t)

	envFile := filepath.Join(d.Home, "api.env")
	_ = os.Remove(envFile)
	defer os.Remove(envFile)
	must("intercept api -- CMD, without sudo", func(t *testing.T) {
		load.setPhase("intercept: start")
		argv := []string{"bridgetun", "intercept", "api", "--port", devLocalPort, "--env-file", "api.env", "--",
			"env", "SERVICE_NAME=" + devService, c.Testapp, "http", "-listen", "127.0.0.1:" + devLocalPort}
		sess.icpt = d.startProc(t, ctx, argv...)
		start := time.Now()
		var m map[string]any
		err := Eventually(ctx, 4*time.Minute, func(ctx context.Context) error {
			if sess.icpt.exited() {
				return errors.New("it exited")
			}
			var err error
			if m, err = nodePortGet(ctx); err != nil {
				return err
			}
			if got := hop(m, 1, "service"); got != devService {
				return fmt.Errorf("the api hop is answered by %q, want %q (CMD)", got, devService)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: in-cluster callers never reached CMD: %v; it printed:\n%s", d.Show(false, argv...), err, indent(sess.icpt.out.String()))
		}
		load.setPhase("intercept: running")
		t.Logf("callers reach CMD %s after the intercept started; it printed:\n%s", time.Since(start).Round(100*time.Millisecond), indent(sess.icpt.out.String()))
		if uid := hopUID(m, 1); uid != d.UID {
			t.Errorf("CMD answered as uid %d, want %d (%s)", uid, d.UID, d.Name)
		}
		for _, pid := range descendants(sess.icpt.pid()) {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe == c.Testapp {
				sess.cmdPID = pid
			}
		}
		if sess.cmdPID == 0 {
			t.Errorf("no testapp process below the intercept (pid %d): is CMD its child?", sess.icpt.pid())
		} else if uid := procUID(sess.cmdPID); uid != d.UID {
			t.Errorf("CMD (pid %d) runs as uid %d, want %d (%s)", sess.cmdPID, uid, d.UID, d.Name)
		}
		if fi, err := os.Lstat(envFile); err != nil {
			t.Errorf("env file ~/api.env: %v", err)
		} else {
			uid := fi.Sys().(*syscall.Stat_t).Uid
			if int(uid) != d.UID || fi.Mode() != 0o600 {
				t.Errorf("env file ~/api.env: owner uid %d mode %v, want %d (%s) and -rw-------", uid, fi.Mode(), d.UID, d.Name)
			}
			if b, _ := os.ReadFile(envFile); !strings.Contains(string(b), `API_TOKEN="s3cr3t-token"`) {
				t.Errorf("env file ~/api.env lacks the pod's API_TOKEN:\n%s", b)
			}
		}
		if err := Eventually(ctx, backWithin, func(ctx context.Context) error {
			st, err := d.status(ctx)
			if err == nil && (len(st.Intercepts) != 1 || st.Intercepts[0].Service != "api" || st.Intercepts[0].State != session.InterceptActive) {
				err = fmt.Errorf("intercepts %+v", st.Intercepts)
			}
			if err == nil && st.Intercepts[0].Grace <= freezeFor {
				err = fmt.Errorf("grace %s: the patch would not outlive the %s sleep", st.Intercepts[0].Grace, freezeFor)
			}
			return err
		}); err != nil {
			t.Errorf("status while CMD serves the callers: %v, want api %s with a grace longer than %s", err, session.InterceptActive, freezeFor)
		}
		if out := sess.icpt.out.String(); strings.Contains(out, "\x1b[") {
			t.Errorf("intercept without a terminal printed terminal escapes (want plain lines):\n%q", out)
		}
	})

	must("a sleep longer than the lease", func(t *testing.T) {
		pids := append([]int{sess.pid}, descendants(sess.pid)...)
		pids = append(pids, sess.icpt.pid())
		pids = append(pids, descendants(sess.icpt.pid())...)
		load.setPhase("asleep (SIGSTOP 60 s)")
		sess.freeze(t, pids)
		asleep := time.Now()
		select { // the sleep itself, not a synchronisation
		case <-time.After(freezeFor):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		_, ann := apiTemplate(t, ctx, c)
		held := ann["bridgetun.io/original-template"] != ""
		load.setPhase("awake (SIGCONT)")
		sess.thaw()
		woke := time.Now()
		t.Logf("froze pids %v for %s (session %d, intercept %d, CMD %d)", pids, woke.Sub(asleep).Round(time.Second), sess.pid, sess.icpt.pid(), sess.cmdPID)
		if !held {
			t.Errorf("the gateway restored api during the %s sleep (no grace period: the patch went with the %s lease)", freezeFor, "15 s")
		}
		err := Eventually(ctx, backWithin, func(ctx context.Context) error {
			m, err := nodePortGet(ctx)
			if err == nil && hop(m, 1, "service") != devService {
				err = fmt.Errorf("api hop answered by %q", hop(m, 1, "service"))
			}
			return err
		})
		if err != nil {
			// How long it really took, if it comes back at all: tells a slow re-attach from a dead intercept.
			late := Eventually(ctx, 2*time.Minute, func(ctx context.Context) error {
				m, err := nodePortGet(ctx)
				if err == nil && hop(m, 1, "service") != devService {
					err = fmt.Errorf("api hop answered by %q", hop(m, 1, "service"))
				}
				return err
			})
			what := fmt.Sprintf("back after %s", time.Since(woke).Round(100*time.Millisecond))
			if late != nil {
				what = "not back after 2 min more: " + late.Error()
			}
			st, serr := d.status(ctx)
			t.Fatalf("after wake, in-cluster callers did not reach CMD within %s (%v); %s.\nstatus: %+v (%v)\nintercept printed:\n%s",
				backWithin, err, what, st.Intercepts, serr, indent(sess.icpt.out.String()))
		}
		t.Logf("after wake, callers reach CMD again in %s", time.Since(woke).Round(100*time.Millisecond))
		if by := load.answers("asleep (SIGSTOP 60 s)"); by["api"] == 0 {
			t.Errorf("during the sleep no caller was answered by the cluster's api (%v): the freeze did not stop the workstation", by)
		}
		load.setPhase("intercept: running again")
		if err := Eventually(ctx, backWithin, func(ctx context.Context) error {
			st, err := d.status(ctx)
			if err == nil && (len(st.Intercepts) != 1 || st.Intercepts[0].State != session.InterceptActive) {
				err = fmt.Errorf("intercepts %+v", st.Intercepts)
			}
			return err
		}); err != nil {
			t.Errorf("status after wake: %v, want api %s", err, session.InterceptActive)
		}
		if sess.icpt.exited() {
			t.Errorf("the intercept process ended during the sleep:\n%s", indent(sess.icpt.out.String()))
		}
	})

	must("leave without sudo", func(t *testing.T) {
		load.setPhase("leave")
		out, err := d.Run(ctx, false, "bridgetun", "leave", "api")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s printed:\n%s", d.Show(false, "bridgetun", "leave", "api"), indent(out))
		if got, ann := apiTemplate(t, ctx, c); got != before || ann["bridgetun.io/original-template"] != "" {
			t.Errorf("api pod template after leave differs from before:\nbefore %s\nafter  %s", before, got)
		}
		// The foreground intercept learns it ended elsewhere; if it keeps CMD running, Ctrl-C ends it.
		select {
		case <-sess.icpt.done:
		case <-time.After(15 * time.Second):
			t.Logf("note: the foreground `intercept -- CMD` still runs 15 s after `leave` elsewhere; pressing Ctrl-C")
			sess.icpt.interrupt(time.Minute)
		}
		t.Logf("intercept printed:\n%s", indent(sess.icpt.out.String()))
		if sess.cmdPID != 0 && processRunning(sess.cmdPID) {
			t.Errorf("CMD (pid %d) still runs after the intercept ended", sess.cmdPID)
		}
	})

	must("down without sudo", func(t *testing.T) {
		load.setPhase("down")
		out, err := d.Run(ctx, false, "bridgetun", "down")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s printed:\n%s", d.Show(false, "bridgetun", "down"), indent(out))
		if err := waitExited(ctx, sess.pid, 30*time.Second); err != nil {
			t.Error(err)
		}
	})

	t.Run("nothing left behind", func(t *testing.T) {
		if got, ann := apiTemplate(t, ctx, c); got != before || ann["bridgetun.io/original-template"] != "" {
			t.Errorf("api still patched after down")
		}
		if out, err := c.inWS(ctx, "ip", "link", "show", "bt0"); err == nil {
			t.Errorf("TUN bt0 still present after down: %s", out)
		}
		if fileSum(t, wsResolv) != resolvBefore {
			b, _ := os.ReadFile(wsResolv)
			t.Errorf("%s after down differs from before:\n%s", wsResolv, b)
		}
		if out, err := d.Run(ctx, false, "bridgetun", "status"); err == nil || !strings.Contains(out, "not up") {
			t.Errorf("%s after down: %v\n%s\nwant \"not up\"", d.Show(false, "bridgetun", "status"), err, indent(out))
		}
		var foreign, sockets, shared, mine []string
		for _, f := range listFiles(areas) {
			prev, existed := snap[f.path]
			changed := !existed || !prev.mtime.Equal(f.mtime)
			switch {
			case f.area == areaUser && f.uid != d.UID:
				foreign = append(foreign, f.String())
			case f.area == areaUser && f.mode&fs.ModeSocket != 0:
				sockets = append(sockets, f.String())
			case f.area != areaUser && changed && f.mtime.After(started) && !f.mode.IsDir():
				shared = append(shared, f.String())
			case f.area == areaUser && !existed:
				mine = append(mine, f.path)
			}
		}
		if len(foreign) > 0 {
			t.Errorf("files in %s's dirs owned by someone else (sudo bridgetun wrote them as root):\n  %s", d.Name, strings.Join(foreign, "\n  "))
		}
		if len(sockets) > 0 {
			t.Errorf("sockets left after down:\n  %s", strings.Join(sockets, "\n  "))
		}
		if len(shared) > 0 {
			t.Errorf("written in root's or the shared dirs instead of %s's:\n  %s", d.Name, strings.Join(shared, "\n  "))
		}
		t.Logf("new files of %s: %v", d.Name, mine)
		if left := leftoverProcesses(d); len(left) > 0 {
			t.Errorf("processes left after down:\n  %s", strings.Join(left, "\n  "))
		}
	})

	// Bad input: a sleep longer than the grace. The intercept is lost; the developer is told in one line, and
	// the workload runs its own template again.
	t.Run("a sleep longer than the grace: lost, in one line", func(t *testing.T) {
		const grace, sleep = 20 * time.Second, 40 * time.Second // sleep > the 15 s lease + grace
		load.setPhase("past the grace: start")
		if _, err := d.Run(ctx, false, d.Sudo("up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream")...); err != nil {
			t.Fatal(err)
		}
		st, err := d.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sess.pid = st.PID
		argv := []string{"bridgetun", "intercept", "api", "--port", devLocalPort, "--grace", grace.String(), "--no-mount", "--",
			"env", "SERVICE_NAME=" + devService, c.Testapp, "http", "-listen", "127.0.0.1:" + devLocalPort}
		p := d.startProc(t, ctx, argv...)
		sess.icpt = p
		if err := Eventually(ctx, 4*time.Minute, func(ctx context.Context) error {
			if p.exited() {
				return errors.New("it exited")
			}
			m, err := nodePortGet(ctx)
			if err == nil && hop(m, 1, "service") != devService {
				err = fmt.Errorf("api hop answered by %q", hop(m, 1, "service"))
			}
			return err
		}); err != nil {
			t.Fatalf("%s: callers never reached CMD: %v; it printed:\n%s", d.Show(false, argv...), err, indent(p.out.String()))
		}
		// Sleep only once the intercept is established: a new pod may route here while the rollout still
		// waits for the old one to go, and a sleep then is not one the grace covers.
		if err := Eventually(ctx, 4*time.Minute, func(ctx context.Context) error {
			st, err := d.status(ctx)
			if err == nil && (len(st.Intercepts) != 1 || st.Intercepts[0].State != session.InterceptActive || st.Intercepts[0].Grace != grace) {
				err = fmt.Errorf("intercepts %+v", st.Intercepts)
			}
			return err
		}); err != nil {
			t.Fatalf("status: %v, want api %s with grace %s", err, session.InterceptActive, grace)
		}
		pids := append([]int{st.PID}, descendants(st.PID)...)
		pids = append(pids, p.pid())
		pids = append(pids, descendants(p.pid())...)
		load.setPhase("past the grace: asleep")
		sess.freeze(t, pids)
		select { // the sleep itself
		case <-time.After(sleep):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
		load.setPhase("past the grace: lost")
		sess.thaw()
		woke := time.Now()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s still runs 30 s after a %s sleep past its %s grace; it printed:\n%s", d.Show(false, argv...), sleep, grace, indent(p.out.String()))
			p.interrupt(time.Minute)
		}
		out := p.out.String()
		t.Logf("%s ended %s after wake; it printed:\n%s", d.Show(false, argv...), time.Since(woke).Round(100*time.Millisecond), indent(out))
		if lines := nonEmptyLines(out); len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "lost") || !strings.Contains(lines[len(lines)-1], "api") {
			t.Errorf("its last line does not say the intercept of api was lost (one line: what was restored, how to start again)")
		}
		if ps := p.cmd.ProcessState; ps == nil || ps.ExitCode() == 0 {
			t.Errorf("the lost intercept exited with %v, want a failure exit code", ps)
		}
		if err := Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
			if got, ann := apiTemplate(t, ctx, c); got != before || ann["bridgetun.io/original-template"] != "" {
				return errors.New("api still patched")
			}
			return nil
		}); err != nil {
			t.Errorf("after the lost intercept: %v", err)
		}
		if _, err := d.Run(ctx, false, "bridgetun", "down"); err != nil {
			t.Error(err)
		}
	})

	// The same developer logged in with a systemd-logind session: their commands have XDG_RUNTIME_DIR,
	// which sudo drops; both sides must still meet on one socket.
	t.Run("a login session's runtime dir (/run/user/UID)", func(t *testing.T) {
		load.setPhase("login session")
		rd := fmt.Sprintf("/run/user/%d", d.UID)
		if _, err := os.Stat("/run/user"); err != nil {
			if err := os.Mkdir("/run/user", 0o755); err != nil { // as logind makes it
				t.Fatal(err)
			}
			defer os.Remove("/run/user")
		}
		if _, err := os.Stat(rd); err != nil {
			if err := os.Mkdir(rd, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(rd, d.UID, d.GID); err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(rd)
		}
		d.RuntimeDir = rd
		defer func() { d.RuntimeDir = "" }()
		argv := d.Sudo("up", "--background", "-n", SampleNamespace, "--gateway-image", gatewayImage, "--transport", "stream")
		if _, err := d.Run(ctx, false, argv...); err != nil {
			t.Fatal(err)
		}
		st, err := d.status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sess.pid = st.PID
		sock := filepath.Join(rd, "bridgetun", "bridgetun.sock")
		if fi, err := os.Lstat(sock); err != nil || fi.Mode()&fs.ModeSocket == 0 || int(fi.Sys().(*syscall.Stat_t).Uid) != d.UID {
			t.Errorf("socket %s: %v, want theirs (the session's socket belongs in their runtime dir)", sock, err)
		}
		if _, err := d.Run(ctx, false, "bridgetun", "down"); err != nil {
			t.Fatal(err)
		}
		if err := waitExited(ctx, st.PID, 30*time.Second); err != nil {
			t.Error(err)
		}
	})
}
