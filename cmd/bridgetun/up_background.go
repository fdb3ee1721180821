package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/bridgetun/bridgetun/internal/invoker"
	"github.com/bridgetun/bridgetun/session"
)

const backgroundChildEnv = "BRIDGETUN_BACKGROUND_CHILD"

// startBackground re-runs this command detached, its output going to
// up.out in the user's log dir, and streams that output's lines to the
// terminal as they come until the session answers on its socket as
// connected; a child that exits first fails with its own error line.
// asJSON sends the lines to stderr and prints the session's status as
// JSON on stdout once connected.
func startBackground(cmd *cobra.Command, u *invoker.User, paths session.Paths, asJSON bool) error {
	if err := u.PrivateDir(paths.LogDir); err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	outPath := filepath.Join(paths.LogDir, "up.out")
	out, err := u.OpenFile(outPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("background output: %w", err)
	}
	defer out.Close()
	in, err := u.OpenFile(outPath, os.O_RDONLY, 0) // the parent's reading end; out is the child's
	if err != nil {
		return fmt.Errorf("background output: %w", err)
	}
	defer in.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, os.Args[1:]...)
	child.Env = append(os.Environ(), backgroundChildEnv+"=1")
	child.Stdout, child.Stderr, child.Stdin = out, out, nil
	child.SysProcAttr = detachedProcAttr()
	if err := child.Start(); err != nil {
		return fmt.Errorf("start background session: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	progress := cmd.OutOrStdout()
	if asJSON {
		progress = cmd.ErrOrStderr()
	}
	lines := newLineStream(in, progress)
	sc := session.NewClient(paths.Socket)
	deadline := time.After(3 * time.Minute)
	for {
		select {
		case err := <-exited:
			if last := lines.finish(); last != "" {
				return errors.New(last)
			}
			return fmt.Errorf("background session exited (%v); its output is in %s", err, outPath)
		case <-deadline:
			stopChild(child.Process)
			lines.flush()
			return fmt.Errorf("background session not connected after 3m; see %s", outPath)
		case <-time.After(100 * time.Millisecond): // polling the new session's output and socket
		}
		lines.flush()
		st, err := sc.Status(context.Background())
		if err == nil && st.State == "connected" && st.PID == child.Process.Pid {
			lines.flush()
			return backgroundReady(cmd.OutOrStdout(), asJSON, st, paths.LogDir)
		}
	}
}

// backgroundReady says the background session st is connected: a line
// naming its pid and log dir, or its status as JSON.
func backgroundReady(w io.Writer, asJSON bool, st session.Status, logDir string) error {
	if asJSON {
		return printJSON(w, st)
	}
	_, err := fmt.Fprintf(w, "running in the background (pid %d), log in %s; `bridgetun status`, `bridgetun down`\n", st.PID, logDir)
	return err
}

// lineStream copies complete lines appended to a file as they come, each
// with the time since the stream began: dim on a terminal, plain
// otherwise (the same text).
type lineStream struct {
	r     io.Reader
	w     io.Writer
	tty   bool
	now   func() time.Time
	start time.Time
	buf   []byte // an incomplete last line
}

func newLineStream(r io.Reader, w io.Writer) *lineStream {
	f, ok := w.(*os.File)
	return &lineStream{r: r, w: w, tty: ok && term.IsTerminal(int(f.Fd())), now: time.Now, start: time.Now()}
}

// flush prints the complete lines read so far.
func (s *lineStream) flush() {
	b, _ := io.ReadAll(s.r) // a file at its end reads 0 bytes, not blocks
	s.buf = append(s.buf, b...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			return
		}
		s.line(string(s.buf[:i]))
		s.buf = s.buf[i+1:]
	}
}

// finish prints what is left after the child exited, except its last
// line when that is its error ("bridgetun: …"), which it returns without
// the prefix for the caller to report.
func (s *lineStream) finish() string {
	b, _ := io.ReadAll(s.r)
	rest := strings.Split(strings.TrimRight(string(append(s.buf, b...)), "\n"), "\n")
	s.buf = nil
	last := ""
	if n := len(rest); n > 0 && strings.HasPrefix(rest[n-1], "bridgetun: ") {
		last, rest = strings.TrimPrefix(rest[n-1], "bridgetun: "), rest[:n-1]
	}
	for _, l := range rest {
		if l != "" {
			s.line(l)
		}
	}
	return last
}

func (s *lineStream) line(l string) {
	took := s.now().Sub(s.start).Round(100 * time.Millisecond).String()
	if s.tty {
		fmt.Fprintf(s.w, "%s \x1b[2m%s\x1b[0m\n", l, took)
		return
	}
	fmt.Fprintf(s.w, "%s %s\n", l, took)
}
