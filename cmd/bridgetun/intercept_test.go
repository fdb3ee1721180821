package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestInterceptRunFlags: intercept and run accept only the flags they use,
// and refuse combinations that would be ignored, before reaching a session.
func TestInterceptRunFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"intercept", "api", "--port", "8080", "--gateway-image", "x"}, "unknown flag: --gateway-image"},
		{[]string{"intercept", "api", "--port", "8080", "--gateway-namespace", "bt"}, "unknown flag: --gateway-namespace"},
		{[]string{"run", "--gateway-image", "x", "--", "true"}, "unknown flag: --gateway-image"},
		{[]string{"run", "--gateway-namespace", "bt", "--", "true"}, "unknown flag: --gateway-namespace"},
		{[]string{"intercept", "api", "--port", "8080", "--detach", "--", "go", "run", "./cmd/api"}, "--detach returns at once, so it cannot run a command after --"},
		{[]string{"intercept", "api", "--port", "8080", "--wait", "2m"}, "--wait is how long the command after -- has to listen"},
		{[]string{"intercept", "api", "--port", "8080", "--grace", "-1m"}, "--grace -1m0s: want 1s to 24h0m0s"},
		{[]string{"intercept", "api", "web", "--port", "8080"}, "one SERVICE"},
		{[]string{"run", "curl", "--", "http://x/"}, "put the whole command after --"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			root := newRootCmd()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestInterceptHelp: the help's examples parse as the workflow needs them
// (the command after -- goes to CMD, not to SERVICE).
func TestInterceptHelp(t *testing.T) {
	cmd := newInterceptCmd()
	for _, line := range strings.Split(cmd.Example, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "bridgetun intercept ") {
			continue
		}
		args := strings.Fields(strings.TrimPrefix(line, "bridgetun intercept "))
		c := newInterceptCmd()
		if err := c.ParseFlags(args); err != nil {
			t.Errorf("example %q: %v", line, err)
			continue
		}
		rest := c.Flags().Args()
		n := c.ArgsLenAtDash()
		if n < 0 {
			n = len(rest)
		}
		if n != 1 || rest[0] != "api" {
			t.Errorf("example %q: SERVICE args %q, want [api]", line, rest[:n])
		}
		if strings.Contains(line, " -- ") && strings.Join(rest[n:], " ") != "go run ./cmd/api" {
			t.Errorf("example %q: command %q, want go run ./cmd/api", line, rest[n:])
		}
	}
	for _, name := range []string{"wait", "grace", "kubeconfig", "context", "namespace"} {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("flag --%s: missing", name)
		}
	}
}

// TestFlagUsages: no backquotes in a flag's usage (pflag would take the
// quoted words for the value's name).
func TestFlagUsages(t *testing.T) {
	for _, c := range []*cobra.Command{newInterceptCmd(), newRunCmd()} {
		for _, name := range []string{"context", "namespace", "kubeconfig", "detach", "wait", "grace", "env-file", "mount", "service", "container"} {
			if f := c.Flags().Lookup(name); f != nil && strings.Contains(f.Usage, "`") {
				t.Errorf("%s --%s: usage %q has a backquote", c.Name(), name, f.Usage)
			}
		}
	}
}
