package session

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

func testPaths(t *testing.T) Paths {
	dir := t.TempDir()
	return Paths{StateDir: dir, Socket: filepath.Join(dir, "run", "bridgetun.sock"), LogDir: filepath.Join(dir, "logs")}
}

// TestRunConnectErrorLeavesNothing: a session that cannot reach the
// cluster returns that error and leaves no record, socket or key behind.
func TestRunConnectErrorLeavesNothing(t *testing.T) {
	paths := testPaths(t)
	want := errors.New("kubeconfig: no such context \"lab\"")
	err := Run(t.Context(), Config{Paths: paths, Log: testkit.Logger(t),
		Connect: func(context.Context, cluster.Options) (*cluster.Conn, error) { return nil, want }})
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want the connect error", err)
	}
	for _, p := range []string{paths.leftoversFile(), paths.Socket, paths.keyFile()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: got %v, want it absent", p, err)
		}
	}
}

// TestRunRefusesBesideALiveSession: with a session answering on the socket
// a second one stops before touching the cluster, naming the first.
func TestRunRefusesBesideALiveSession(t *testing.T) {
	paths := testPaths(t)
	a, err := listenAPI(paths, apiHandlers{status: func() Status { return Status{PID: os.Getpid()} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	connected := false
	err = Run(t.Context(), Config{Paths: paths, Log: testkit.Logger(t),
		Connect: func(context.Context, cluster.Options) (*cluster.Conn, error) { connected = true; return nil, errStop }})
	var up *AlreadyUpError
	if !errors.As(err, &up) || up.PID != os.Getpid() {
		t.Fatalf("got %v, want *AlreadyUpError naming pid %d", err, os.Getpid())
	}
	if connected {
		t.Error("the second session connected to the cluster")
	}
}

// TestRepairsDeadSessionsRecord: a record left by a dead process is
// removed at the next start, its socket with it.
func TestRepairsDeadSessionsRecord(t *testing.T) {
	paths := testPaths(t)
	if err := os.MkdirAll(filepath.Dir(paths.Socket), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(paths.Socket, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := paths.writeLeftovers(leftovers{PID: deadPID(t), Socket: paths.Socket, Context: "lab"}); err != nil {
		t.Fatal(err)
	}
	repaired, err := paths.repairLeftovers(func(string) error { return os.ErrNotExist })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(paths.leftoversFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("record: got %v, want removed", err)
	}
	if _, err := os.Stat(paths.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket: got %v, want removed (repaired: %q)", err, repaired)
	}
	if !strings.Contains(strings.Join(repaired, "; "), "removed stale socket bridgetun.sock") {
		t.Errorf("repaired: got %q, want the stale socket named", repaired)
	}
}

// deadPID is the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}
