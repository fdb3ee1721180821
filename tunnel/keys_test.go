package tunnel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	k := mustKey(t)
	if k.IsZero() {
		t.Fatal("GenerateKey: got zero key")
	}
	if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
		t.Errorf("GenerateKey: got unclamped key %x", k)
	}
	for _, key := range []Key{k, k.PublicKey()} {
		got, err := ParseKey(key.String())
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", key, err)
		}
		if got != key {
			t.Errorf("ParseKey(String()): got %s, want %s", got, key)
		}
	}
	// RFC 7748 section 6.1 test vector (Alice).
	priv, _ := ParseKey("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
	if got, want := priv.PublicKey().String(), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="; got != want {
		t.Errorf("PublicKey: got %s, want %s", got, want)
	}
}

func TestParseKeyErrors(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", "empty"},
		{"not base64!", "not valid base64"},
		{"AAAA", "decoded to 3 bytes, want 32"},
	}
	for _, tt := range tests {
		_, err := ParseKey(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseKey(%q): got error %v, want one containing %q", tt.in, err, tt.want)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", "private.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s: got %#o, want %#o", p, got, want)
		}
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Errorf("second load: got %s, want %s", k2, k1)
	}

	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err = LoadOrCreateKey(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("group-readable key: got error %v, want one naming %s and chmod 600", err, path)
	}

	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("garbage key: got error %v, want one naming %s", err, bad)
	}
}
