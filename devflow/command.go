package devflow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bridgetun/bridgetun/internal/invoker"
)

// server is intercept's `-- CMD`: the local server, started before the
// workload is patched. It runs in a process group of its own so that
// stopping it stops what it started (`go run` ignores SIGINT and waits for
// the program it built), and its output goes to the user's streams while
// the last lines are kept for an error.
type server struct {
	cmd  *exec.Cmd
	name string // `CMD ARGS` for messages
	tail *tailBuffer
	done chan struct{} // closed once it exited
	code int           // its exit code (-1: ended by a signal); valid after done
	err  error         // a failure to wait; valid after done
}

// stopGrace is how long a server has after SIGINT before it is killed.
const stopGrace = 10 * time.Second

// startServer starts command with env. Its stdin is stdio.In unless that is
// a terminal: a process group in the background that reads the terminal
// would be stopped by it (SIGTTIN), so it gets the null device.
func startServer(command, env []string, stdio Stdio, cred *invoker.Credential) (*server, error) {
	s := &server{name: commandName(command), tail: newTailBuffer(20), done: make(chan struct{})}
	c := exec.Command(command[0], command[1:]...)
	c.Env = env
	if stdio.In != nil && !isTerminal(stdio.In) {
		c.Stdin = stdio.In
	}
	c.Stdout = io.MultiWriter(writerOrDiscard(stdio.Out), s.tail)
	c.Stderr = io.MultiWriter(writerOrDiscard(stdio.Err), s.tail)
	c.SysProcAttr = serverProcAttr(cred)
	c.WaitDelay = time.Second // something it left behind may hold its output open: do not wait for that
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", command[0], err)
	}
	s.cmd = c
	go func() {
		defer close(s.done)
		err := c.Wait()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			s.code = ee.ExitCode()
		case errors.Is(err, exec.ErrWaitDelay): // it exited; its output was cut
			s.code = c.ProcessState.ExitCode()
		case err != nil:
			s.err = fmt.Errorf("run %s: %w", command[0], err)
		}
	}()
	return s, nil
}

// commandName is "`CMD ARGS`", for messages.
func commandName(command []string) string { return "`" + strings.Join(command, " ") + "`" }

// signal sends sig to the server's process group.
func (s *server) signal(sig syscall.Signal) {
	signalGroup(s.cmd.Process, sig)
}

// stop interrupts the server's process group, kills it if it has not
// exited within stopGrace, and waits for it.
func (s *server) stop() {
	s.signal(syscall.SIGINT)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
		s.signal(syscall.SIGKILL)
		<-s.done
	}
}

// wait returns the server's exit code once it exited. When ctx ends
// first (Ctrl-C), the server is stopped and waited for.
func (s *server) wait(ctx context.Context) (int, error) {
	select {
	case <-s.done:
	case <-ctx.Done():
		s.stop()
	}
	return s.code, s.err
}

// waitListening waits until something accepts connections on
// 127.0.0.1:port (listening says whether it does), at most wait. It returns
// nil once it does, errExited when the server exited first, errWaitedOut
// after wait, and ctx's error when ctx ends; the server keeps running in
// every case.
func (s *server) waitListening(ctx context.Context, port int, wait time.Duration, listening func(ctx context.Context, port int) bool) error {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	t := time.NewTicker(listenPoll)
	defer t.Stop()
	for {
		if listening(ctx, port) {
			return nil
		}
		select {
		case <-s.done:
			return errExited
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errWaitedOut
		case <-t.C:
		}
	}
}

var (
	errExited    = errors.New("exited before it listened")
	errWaitedOut = errors.New("did not listen in time")
)

// listenPoll is how often waitListening dials.
const listenPoll = 100 * time.Millisecond

// dialListening reports whether a TCP connection to 127.0.0.1:port is
// accepted: the session relays to exactly that address.
func dialListening(ctx context.Context, port int) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// tailBuffer keeps the last n lines written to it.
type tailBuffer struct {
	mu    sync.Mutex
	n     int
	lines []string
	part  []byte // the unfinished last line
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{n: n} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			break
		}
		t.add(string(t.part[:i]))
		t.part = t.part[i+1:]
	}
	if len(t.part) > 4096 { // a line without end: keep its start
		t.add(string(t.part[:4096]))
		t.part = t.part[:0]
	}
	return len(p), nil
}

func (t *tailBuffer) add(line string) {
	t.lines = append(t.lines, strings.TrimRight(line, "\r"))
	if len(t.lines) > t.n {
		t.lines = t.lines[len(t.lines)-t.n:]
	}
}

// Lines are the last lines written, the unfinished one included.
func (t *tailBuffer) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := append([]string(nil), t.lines...)
	if len(t.part) > 0 {
		out = append(out, string(t.part))
		if len(out) > t.n {
			out = out[len(out)-t.n:]
		}
	}
	return out
}

func writerOrDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
