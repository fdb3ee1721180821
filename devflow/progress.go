package devflow

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/bridgetun/bridgetun/session"
)

// progress prints a workflow's steps where the user looks: a finished step
// with the time it took since the previous one ("✓ patched deployment/api
// 0.2s"), a wait while it lasts ("… 1 of 2 replicas ready"). On a terminal
// the steps get symbols and colour; otherwise the same lines come plain,
// for logs and scripts. It is safe for concurrent use.
type progress struct {
	w     io.Writer
	tty   bool
	now   func() time.Time
	mu    sync.Mutex
	start time.Time
	last  time.Time
}

// newProgress prints to w; colour and symbols when w is a terminal.
func newProgress(w io.Writer) *progress {
	p := &progress{w: w, tty: isTerminal(w), now: time.Now}
	p.start = p.now()
	p.last = p.start
	return p
}

// isTerminal reports whether the stream s is a terminal.
func isTerminal(s any) bool {
	f, ok := s.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

const (
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiRed    = "\x1b[31m"
	ansiDim    = "\x1b[2m"
	ansiReset  = "\x1b[0m"
)

// done prints a finished step and the time since the previous one.
func (p *progress) done(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	took := now.Sub(p.last)
	p.last = now
	p.line(ansiGreen, "✓", fmt.Sprintf(format, args...), formatDuration(took))
}

// waiting prints what the workflow waits for now.
func (p *progress) waiting(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line(ansiYellow, "…", fmt.Sprintf(format, args...), "")
}

// failed prints a step that went wrong (the error itself comes after).
func (p *progress) failed(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.line(ansiRed, "✗", fmt.Sprintf(format, args...), "")
}

// info prints a detail of the step before, indented.
func (p *progress) info(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "  %s\n", fmt.Sprintf(format, args...))
}

// event prints a step the session reported.
func (p *progress) event(e session.InterceptEvent) {
	if e.Done {
		p.done("%s", e.Text)
	} else {
		p.waiting("%s", e.Text)
	}
}

// interceptState prints a held intercept's new state: reconnecting (and
// why), or active again.
func (p *progress) interceptState(it session.InterceptInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch it.State {
	case session.InterceptActive:
		p.line(ansiGreen, "✓", fmt.Sprintf("intercept of %s active again", it.Service), "")
	case session.InterceptReconnecting:
		text := fmt.Sprintf("intercept of %s reconnecting since %s", it.Service, it.StateSince.Format("15:04:05"))
		if it.StateReason != "" {
			text += ": " + it.StateReason
		}
		p.line(ansiYellow, "…", text, "")
	}
}

// finished prints the last step with the time since the workflow started:
// "✓ routed: … (total 9.8s)".
func (p *progress) finished(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = p.now()
	p.line(ansiGreen, "✓", fmt.Sprintf(format, args...)+" (total "+formatDuration(p.last.Sub(p.start))+")", "")
}

func (p *progress) line(colour, symbol, text, took string) {
	switch {
	case !p.tty && took == "":
		fmt.Fprintf(p.w, "%s\n", text)
	case !p.tty:
		fmt.Fprintf(p.w, "%s %s\n", text, took)
	case took == "":
		fmt.Fprintf(p.w, "%s%s%s %s\n", colour, symbol, ansiReset, text)
	default:
		fmt.Fprintf(p.w, "%s%s%s %s %s%s%s\n", colour, symbol, ansiReset, text, ansiDim, took, ansiReset)
	}
}

// formatDuration is "0.3s" under a minute, else "1m5s".
func formatDuration(d time.Duration) string {
	if d < time.Minute {
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}
