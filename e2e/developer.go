package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

const (
	SudoersFile      = "/etc/sudoers.d/bridgetun-e2e" // the sudoers rule NewDeveloper writes (its cleanup removes it)
	DeveloperContext = "developer-laptop"             // the current context of the developer's ~/.kube/config
)

// Developer is User logged in on the workstation the way a developer is: HOME, USER, LOGNAME, SHELL and a
// PATH that holds bridgetun and testapp; the kubeconfig at ~/.kube/config (0600, theirs) and no KUBECONFIG;
// a sudoers rule that lets them run exactly that bridgetun as root, with Debian's defaults (env_reset, no
// env_keep): what `sudo bridgetun up` sees is what a real user's sudo hands over.
type Developer struct {
	c        *Cluster
	Name     string
	UID, GID int
	Home     string
	Bin      string // the bridgetun they run: a root-owned 0755 copy of bin/bridgetun, the sudoers rule's command
	// RuntimeDir is the XDG_RUNTIME_DIR of their login session (systemd-logind's /run/user/UID); "" = none, as
	// for a system user or an SSH login without libpam-systemd.
	RuntimeDir string
}

// NewDeveloper sets up User as a developer (see Developer). Its cleanup removes the sudoers rule and the
// kubeconfig it wrote (putting back one that was there).
func NewDeveloper(t testing.TB, c *Cluster) *Developer {
	t.Helper()
	u, err := user.Lookup(User)
	if err != nil {
		t.Fatalf("developer: no user %s (e2e/cluster/06-workstation.sh creates it): %v", User, err)
	}
	if _, err := exec.LookPath("sudo"); err != nil {
		t.Fatalf("developer: sudo is not installed (e2e/cluster/01-install.sh installs it): %v", err)
	}
	d := &Developer{c: c, Name: User, Home: u.HomeDir}
	d.UID, _ = strconv.Atoi(u.Uid)
	d.GID, _ = strconv.Atoi(u.Gid)

	// A copy of the build, so a `make build` during the run cannot swap the binary the rule names.
	src := filepath.Join(c.Repo, "bin", "bridgetun")
	d.Bin = filepath.Join(c.binDir, "bridgetun")
	if err := copyFile(src, d.Bin, 0o755); err != nil {
		t.Fatalf("developer: %v (run `make build`)", err)
	}

	rule := fmt.Sprintf("# bridgetun e2e (e2e/developer.go): %s may run this one binary as root.\n%s ALL=(root) NOPASSWD: %s\n", d.Name, d.Name, d.Bin)
	tmp := filepath.Join(c.binDir, "sudoers.tmp")
	if err := os.WriteFile(tmp, []byte(rule), 0o440); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("visudo", "-cf", tmp).CombinedOutput(); err != nil {
		t.Fatalf("developer: sudoers rule does not validate: %v\n%s\n%s", err, out, rule)
	}
	if err := os.Rename(tmp, SudoersFile); err != nil {
		t.Fatalf("developer: install %s: %v", SudoersFile, err)
	}
	t.Cleanup(func() { os.Remove(SudoersFile) })

	kdir := filepath.Join(d.Home, ".kube")
	kc := filepath.Join(kdir, "config")
	if err := os.MkdirAll(kdir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(kdir, d.UID, d.GID); err != nil {
		t.Fatal(err)
	}
	prev, prevErr := os.ReadFile(kc)
	// Their own context name: `status` naming it proves the session read their kubeconfig.
	cfg, err := clientcmd.LoadFromFile(c.UserKubeconfig)
	if err != nil || cfg.Contexts[cfg.CurrentContext] == nil {
		t.Fatalf("developer: kubeconfig %s: %v (no current context?)", c.UserKubeconfig, err)
	}
	cfg.Contexts[DeveloperContext] = cfg.Contexts[cfg.CurrentContext]
	delete(cfg.Contexts, cfg.CurrentContext)
	cfg.CurrentContext = DeveloperContext
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatalf("developer: ~/.kube/config: %v", err)
	}
	if err := os.Chmod(kc, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(kc, d.UID, d.GID); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if prevErr == nil {
			_ = os.WriteFile(kc, prev, 0o600)
			_ = os.Chown(kc, d.UID, d.GID)
			return
		}
		os.Remove(kc)
	})
	return d
}

// Env is the developer's login environment: no KUBECONFIG, XDG_RUNTIME_DIR only with RuntimeDir, bridgetun
// and testapp on PATH.
func (d *Developer) Env() []string {
	env := []string{
		"PATH=" + filepath.Dir(d.Bin) + ":" + filepath.Dir(d.c.Testapp) + ":/usr/local/bin:/usr/bin:/bin",
		"HOME=" + d.Home, "USER=" + d.Name, "LOGNAME=" + d.Name, "SHELL=/bin/sh", "LANG=C.UTF-8",
	}
	if d.RuntimeDir != "" {
		env = append(env, "XDG_RUNTIME_DIR="+d.RuntimeDir)
	}
	return env
}

// Cmd returns argv run as the developer inside the workstation namespace, in their home directory, with Env.
// With tty, it runs on a pseudo-terminal (util-linux script), as typed in a terminal; its output then has the
// terminal's line endings (Run strips them). argv[0] "bridgetun" is their bridgetun.
func (d *Developer) Cmd(ctx context.Context, tty bool, argv ...string) *exec.Cmd {
	argv = d.resolve(argv)
	pre := []string{"netns", "exec", WorkstationNS, "setpriv", "--reuid", strconv.Itoa(d.UID), "--regid", strconv.Itoa(d.GID), "--init-groups", "--"}
	if tty {
		pre = append(pre, "script", "-qefc", shellJoin(argv), "/dev/null")
		argv = nil
	}
	cmd := exec.CommandContext(ctx, "ip", append(pre, argv...)...)
	cmd.Env, cmd.Dir = d.Env(), d.Home
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs Cmd and returns its combined output; the error names the command as the developer typed it, whether
// it had a terminal, and what it printed: what the user saw.
func (d *Developer) Run(ctx context.Context, tty bool, argv ...string) (string, error) {
	var b bytes.Buffer
	cmd := d.Cmd(ctx, tty, argv...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	out := cleanTTY(b.String())
	if err != nil {
		return out, fmt.Errorf("%s: %w; it printed:\n%s", d.Show(tty, argv...), err, indent(out))
	}
	return out, nil
}

// Show is argv as the developer typed it ("$ sudo bridgetun up ..." with the harness's paths shortened).
func (d *Developer) Show(tty bool, argv ...string) string {
	var parts []string
	for _, a := range argv {
		a = strings.ReplaceAll(a, d.Bin, "bridgetun")
		a = strings.ReplaceAll(a, d.c.Testapp, "testapp")
		if a == "-n" && len(parts) > 0 && parts[len(parts)-1] == "sudo" {
			continue // sudo -n: fail instead of asking for a password
		}
		parts = append(parts, a)
	}
	where := "no terminal"
	if tty {
		where = "in a terminal"
	}
	return fmt.Sprintf("`%s` (as %s in %s, %s)", strings.Join(parts, " "), d.Name, WorkstationNS, where)
}

// Sudo is argv for `sudo bridgetun ARGS` (-n: a missing rule fails instead of asking for a password).
func (d *Developer) Sudo(args ...string) []string {
	return append([]string{"sudo", "-n", d.Bin}, args...)
}

func (d *Developer) resolve(argv []string) []string {
	out := append([]string(nil), argv...)
	for i, a := range out {
		if a == "bridgetun" && (i == 0 || out[i-1] == "-n" || out[i-1] == "sudo") {
			out[i] = d.Bin
		}
	}
	return out
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// cleanTTY drops a terminal's carriage returns, and the NUL (and its echo ^@) that script(1) sends at the end
// of its empty input.
func cleanTTY(s string) string {
	return strings.NewReplacer("\r\n", "\n", "\r", "", "\x00", "", "^@", "").Replace(s)
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (nothing)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
