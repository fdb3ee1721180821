package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The parent of `up --background` prints the child's lines as they are
// appended to its output file, each with the time since the start (plain
// when not a terminal), holds back a partial line, and turns the child's
// last "bridgetun: …" line into its own error.
func TestLineStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "up.out")
	w, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out strings.Builder
	now := time.Unix(0, 0)
	s := &lineStream{r: r, w: &out, now: func() time.Time { return now }, start: now}

	w.WriteString("context \"lab\", namespace \"a\"\ngateway re")
	now = now.Add(1200 * time.Millisecond)
	s.flush()
	if got, want := out.String(), "context \"lab\", namespace \"a\" 1.2s\n"; got != want {
		t.Fatalf("first flush: got %q, want %q (no partial line)", got, want)
	}
	w.WriteString("ady: pod gw-1\n")
	s.flush()
	if got := out.String(); !strings.HasSuffix(got, "gateway ready: pod gw-1 1.2s\n") {
		t.Errorf("second flush: got %q, want the completed line", got)
	}
	w.WriteString("trying udp\nbridgetun: TUN mode needs root: run with sudo, or use --netstack\n")
	if got, want := s.finish(), "TUN mode needs root: run with sudo, or use --netstack"; got != want {
		t.Errorf("finish: got %q, want the child's error %q", got, want)
	}
	if got := out.String(); !strings.HasSuffix(got, "trying udp 1.2s\n") || strings.Contains(got, "bridgetun:") {
		t.Errorf("after finish: got %q, want the rest printed and the error line held back", got)
	}
	if strings.Contains(out.String(), "\x1b[") {
		t.Errorf("not a terminal: got escape codes in %q", out.String())
	}
}
