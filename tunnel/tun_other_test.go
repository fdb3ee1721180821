//go:build !linux

package tunnel

import (
	"errors"
	"testing"
)

// TestTUNUnsupported: outside Linux, TUN mode is ErrUnsupported with the
// one-line hint, from TUNSupported and CreateTUN alike.
func TestTUNUnsupported(t *testing.T) {
	const want = "TUN mode is Linux-only for now: use --netstack"
	if err := TUNSupported(); !errors.Is(err, errors.ErrUnsupported) || err.Error() != want {
		t.Errorf("TUNSupported: got %v, want %q wrapping errors.ErrUnsupported", err, want)
	}
	if _, err := CreateTUN(TUNConfig{Name: "bt0"}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CreateTUN: got %v, want errors.ErrUnsupported", err)
	}
}
