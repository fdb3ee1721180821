package iptables

import (
	"errors"
	"strings"
	"testing"
)

func TestRenderGolden(t *testing.T) {
	got := Rules{ContainerPort: 8080, SidecarPort: 15001, SidecarUID: 65532}.Render()
	want := `*nat
:BRIDGETUN-INBOUND - [0:0]
:BRIDGETUN-OUTPUT - [0:0]
-A BRIDGETUN-INBOUND -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15001
-A BRIDGETUN-OUTPUT -m owner --uid-owner 65532 -j RETURN
-A BRIDGETUN-OUTPUT -o lo -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j BRIDGETUN-INBOUND
-A OUTPUT -p tcp -j BRIDGETUN-OUTPUT
COMMIT
`
	if got != want {
		t.Errorf("Render:\ngot:\n%s\nwant:\n%s", got, want)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Rules
		want string // substring of the error; "" = valid
	}{
		{"ok", Rules{8080, 15001, 65532}, ""},
		{"no container port", Rules{0, 15001, 65532}, "container port 0"},
		{"port too big", Rules{70000, 15001, 65532}, "container port 70000"},
		{"same ports", Rules{8080, 8080, 65532}, "equals the container port"},
		{"root sidecar", Rules{8080, 15001, 0}, "non-root"},
	} {
		err := tc.r.Validate()
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want error containing %q", tc.name, err, tc.want)
		}
	}
}

// fakeRunner records calls and pretends hooks and chains are absent.
type fakeRunner struct{ calls []string }

func (f *fakeRunner) Run(name string, args []string, stdin string) (string, error) {
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if name == "iptables" {
		return "iptables: No chain/target/match by that name.", errors.New("exit status 1")
	}
	return "", nil
}

func TestApplyCleansUpFirst(t *testing.T) {
	f := &fakeRunner{}
	if err := Apply(f, Rules{8080, 15001, 65532}); err != nil {
		t.Fatal(err)
	}
	last := f.calls[len(f.calls)-1]
	if last != "iptables-restore --noflush" {
		t.Errorf("last call: got %q, want the single iptables-restore", last)
	}
	if !strings.HasPrefix(f.calls[0], "iptables -w -t nat -D PREROUTING") {
		t.Errorf("first call: got %q, want hook removal", f.calls[0])
	}
	if err := Apply(f, Rules{}); err == nil {
		t.Error("Apply with empty rules: got nil, want a validation error")
	}
}
