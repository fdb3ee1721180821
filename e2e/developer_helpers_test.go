package e2e

// Helpers of TestDeveloper: its session and processes (freeze, thaw, teardown), the in-cluster caller loop,
// the file areas it checks for leftovers, and /proc readers.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/session"
)

// devSession is what TestDeveloper started, for its checks and its cleanup.
type devSession struct {
	pid    int // the `up` session
	icpt   *devProc
	cmdPID int // CMD
	mu     sync.Mutex
	frozen []int
}

// freeze SIGSTOPs pids and checks the kernel stopped them.
func (s *devSession) freeze(t *testing.T, pids []int) {
	t.Helper()
	s.mu.Lock()
	s.frozen = append(s.frozen, pids...)
	s.mu.Unlock()
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Errorf("SIGSTOP %d: %v", pid, err)
		}
	}
	for _, pid := range pids {
		if err := Eventually(t.Context(), 5*time.Second, func(context.Context) error {
			if st := procState(pid); st != 'T' {
				return fmt.Errorf("pid %d in state %q", pid, st)
			}
			return nil
		}); err != nil {
			t.Errorf("freeze: %v", err)
		}
	}
}

func (s *devSession) thaw() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range s.frozen {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	s.frozen = nil
}

// teardown undoes whatever a failed run left: wakes frozen processes, ends the intercept and the session
// (without sudo, then with it, then by signal), restores api if still patched, and logs the developer's
// bridgetun logs if the test failed.
func (s *devSession) teardown(t *testing.T, d *Developer) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s.thaw()
	if s.icpt != nil && !s.icpt.exited() {
		s.icpt.interrupt(time.Minute)
	}
	if t.Failed() {
		for _, f := range listFiles(d.fileAreas()) {
			if b := filepath.Base(f.path); b == "up.out" || b == "bridgetun.log" {
				if data, err := os.ReadFile(f.path); err == nil {
					t.Logf("--- %s (tail):\n%s", f.path, tailLines(string(data), 60))
				}
			}
		}
	}
	if _, err := d.Run(ctx, false, "bridgetun", "down"); err != nil {
		_, _ = d.Run(ctx, false, d.Sudo("down")...)
	}
	if s.pid > 0 && processRunning(s.pid) {
		t.Logf("cleanup: session %d survived `down`; SIGTERM", s.pid)
		_ = syscall.Kill(s.pid, syscall.SIGTERM)
		if waitExited(ctx, s.pid, 30*time.Second) != nil {
			_ = syscall.Kill(s.pid, syscall.SIGKILL)
		}
	}
	if _, ann := apiTemplate(t, ctx, d.c); ann["bridgetun.io/original-template"] != "" {
		t.Logf("cleanup: api still patched; uninstall --all")
		dir, _ := os.MkdirTemp("", "bt-e2e-dev-cleanup-")
		defer os.RemoveAll(dir)
		cmd := d.c.InWorkstation(ctx, d.Bin, "uninstall", "--all", "-n", SampleNamespace)
		cmd.Env = append(cmd.Env, "BRIDGETUN_STATE_DIR="+dir, "TMPDIR="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("cleanup: uninstall --all: %v\n%s", err, out)
		}
	}
}

func (d *Developer) status(ctx context.Context) (session.Status, error) {
	var st session.Status
	out, err := d.Run(ctx, false, "bridgetun", "status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("%s: %w: %s", d.Show(false, "bridgetun", "status", "--json"), err, out)
	}
	if st.State == "down" { // --json says so and exits 0
		return st, fmt.Errorf("%s: not up", d.Show(false, "bridgetun", "status", "--json"))
	}
	return st, nil
}

// devProc is a long-running command of the developer (a foreground intercept).
type devProc struct {
	cmd  *exec.Cmd
	out  *safeBuffer
	done chan struct{}
}

func (d *Developer) startProc(t *testing.T, ctx context.Context, argv ...string) *devProc {
	t.Helper()
	cmd := d.Cmd(ctx, false, argv...)
	p := &devProc{out: &safeBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", d.Show(false, argv...), err)
	}
	p.cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p
}

func (p *devProc) pid() int { return p.cmd.Process.Pid }

func (p *devProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// interrupt presses Ctrl-C and waits up to max for the process to end, then kills it.
func (p *devProc) interrupt(max time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(max):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// nodePortGet asks the frontend through its NodePort from the host, as any in-cluster caller of api would:
// frontend calls api per request.
func nodePortGet(ctx context.Context) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+NodeIP+":30080/", nil)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %.200s", resp.Status, b)
	}
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("%s: %s", resp.Status, hopErr(m))
	}
	return m, nil
}

func hopErr(m map[string]any) string {
	var errs []string
	for ; m != nil; m, _ = m["downstream"].(map[string]any) {
		if e, _ := m["error"].(string); e != "" {
			errs = append(errs, e)
		}
	}
	return strings.Join(errs, "; ")
}

// hopUID is the uid the n-th hop of a chain answer reported (-1: none).
func hopUID(m map[string]any, n int) int {
	for ; n > 0 && m != nil; n-- {
		m, _ = m["downstream"].(map[string]any)
	}
	if v, ok := m["uid"].(float64); ok {
		return int(v)
	}
	return -1
}

// callers is a loop of in-cluster calls of api (through the frontend's NodePort) at a fixed rate, counted per
// phase with who answered the api hop.
type callers struct {
	mu     sync.Mutex
	phase  string
	order  []string
	phases map[string]*callerPhase
	stop   chan struct{}
	done   chan struct{}
}

type callerPhase struct {
	start      time.Time
	ok, failed int
	by         map[string]int // api hop's service → answers
	fails      []string
}

func startCallers(rate int) *callers {
	l := &callers{phases: map[string]*callerPhase{}, stop: make(chan struct{}), done: make(chan struct{})}
	l.setPhase("baseline")
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / time.Duration(rate)) // the load's pace
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				wg.Wait()
				return
			case <-tick.C:
			}
			l.mu.Lock()
			ph := l.phases[l.phase]
			l.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				sent := time.Now()
				m, err := nodePortGet(context.Background())
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					ph.failed++
					ph.fails = append(ph.fails, fmt.Sprintf("+%.2fs %.200s", sent.Sub(ph.start).Seconds(), err))
					return
				}
				ph.ok++
				ph.by[hop(m, 1, "service")]++
			}()
		}
	}()
	return l
}

// answers is who answered the api hop in phase p so far.
func (l *callers) answers(p string) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	if ph := l.phases[p]; ph != nil {
		for k, v := range ph.by {
			out[k] = v
		}
	}
	return out
}

func (l *callers) setPhase(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.phases[p] == nil {
		l.phases[p] = &callerPhase{start: time.Now(), by: map[string]int{}}
		l.order = append(l.order, p)
	}
	l.phase = p
}

// report stops the loop, logs the table and fails the test if the service did not answer throughout: at most
// 2 failed calls in all (a call in flight to CMD at the moment it froze may time out).
func (l *callers) report(t *testing.T) {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	total := 0
	fmt.Fprintf(&b, "in-cluster callers (20/s, NodePort → frontend → api): failed/total per phase, who answered api:\n")
	for _, p := range l.order {
		ph := l.phases[p]
		if ph.ok+ph.failed == 0 {
			continue
		}
		total += ph.failed
		fmt.Fprintf(&b, "  %-28s %4d / %5d  %v\n", p, ph.failed, ph.failed+ph.ok, ph.by)
		for _, f := range ph.fails {
			fmt.Fprintf(&b, "      failed %s\n", f)
		}
	}
	t.Log(b.String())
	if total > 2 {
		t.Errorf("%d in-cluster calls of api failed, want at most 2: the service must answer throughout (table above)", total)
	}
}

// Where bridgetun may write for the developer (theirs) and where it must not (root's, the shared temp dir).
type fileAreas struct{ user, other []string }

const (
	areaUser  = "user"
	areaOther = "other"
)

func (d *Developer) fileAreas() fileAreas {
	tmp := os.TempDir()
	return fileAreas{
		user: []string{d.Home, filepath.Join(tmp, fmt.Sprintf("bridgetun-%d", d.UID))},
		// root's own: its config dir (a session keyed to root's home by mistake), the system state
		// (resolv.conf backup) and the owner marker a root-held session leaves while it runs.
		other: []string{"/root/.config/bridgetun", "/var/lib/bridgetun", "/run/bridgetun", filepath.Join(tmp, "bridgetun"), filepath.Join(tmp, "bridgetun-0")},
	}
}

// clearRootLeftovers removes files of an earlier failed run that root left in the developer's dirs, so this
// run judges only what it does.
func (d *Developer) clearRootLeftovers(t *testing.T, a fileAreas) {
	for _, f := range listFiles(fileAreas{user: a.user}) {
		if f.uid != d.UID && f.path != d.Home {
			t.Logf("removing a leftover of an earlier run: %s", f)
			os.RemoveAll(f.path)
		}
	}
}

type fileEntry struct {
	path, area string
	uid        int
	mode       fs.FileMode
	mtime      time.Time
}

func (f fileEntry) String() string {
	return fmt.Sprintf("%s (uid %d, %v)", f.path, f.uid, f.mode)
}

func listFiles(a fileAreas) []fileEntry {
	var out []fileEntry
	walk := func(root, area string) {
		_ = filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			fi, err := de.Info()
			if err != nil {
				return nil
			}
			out = append(out, fileEntry{path: p, area: area, uid: int(fi.Sys().(*syscall.Stat_t).Uid), mode: fi.Mode(), mtime: fi.ModTime()})
			return nil
		})
	}
	for _, r := range a.user {
		walk(r, areaUser)
	}
	for _, r := range a.other {
		walk(r, areaOther)
	}
	return out
}

func snapshotFiles(a fileAreas) map[string]fileEntry {
	m := map[string]fileEntry{}
	for _, f := range listFiles(a) {
		m[f.path] = f
	}
	return m
}

// leftoverProcesses lists the developer's processes and any running their bridgetun.
func leftoverProcesses(d *Developer) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !processRunning(pid) {
			continue
		}
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if procUID(pid) == d.UID || strings.HasPrefix(exe, d.Bin) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			out = append(out, fmt.Sprintf("pid %d uid %d: %s", pid, procUID(pid), bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte{' '})))
		}
	}
	sort.Strings(out)
	return out
}

// descendants are pid's children, their children, and so on.
func descendants(pid int) []int {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := procPPID(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

// procStat returns the fields of /proc/PID/stat after the command name (state is [0], ppid [1]).
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func procState(pid int) byte {
	if f := procStat(pid); len(f) > 0 {
		return f[0][0]
	}
	return 0
}

func procPPID(pid int) int {
	if f := procStat(pid); len(f) > 1 {
		n, _ := strconv.Atoi(f[1])
		return n
	}
	return 0
}

// procUID is pid's real uid (-1 if it is gone).
func procUID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
