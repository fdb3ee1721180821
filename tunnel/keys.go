package tunnel

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// Key is a Curve25519 key as used by WireGuard: private keys are clamped
// scalars, public keys are points on the curve.
type Key [32]byte

// GenerateKey returns a new clamped Curve25519 private key.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	k.clamp()
	return k, nil
}

// clamp applies the Curve25519 private key clamping (RFC 7748 section 5).
func (k *Key) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// ParseKey decodes a base64 (standard encoding) WireGuard key, the format
// `wg genkey` and `wg pubkey` print.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Key{}, errors.New("parse key: empty string")
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("parse key: not valid base64: %w", err)
	}
	if len(b) != len(Key{}) {
		return Key{}, fmt.Errorf("parse key: decoded to %d bytes, want %d", len(b), len(Key{}))
	}
	return Key(b), nil
}

// PublicKey derives the public key of private key k.
func (k Key) PublicKey() Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// String returns the key in base64 (standard encoding).
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is the all-zero key, i.e. unset.
func (k Key) IsZero() bool { return k == Key{} }

// hex is the lower-case hex form used by wireguard-go's UAPI.
func (k Key) hex() string { return fmt.Sprintf("%x", k[:]) }

// LoadOrCreateKey reads the private key stored at path, or creates one
// (directory 0700, file 0600) when the file does not exist. Because the key
// is the workstation's identity (its tunnel address derives from it), a file
// other users can read is refused rather than silently used.
func LoadOrCreateKey(path string) (Key, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return createKey(path)
	case err != nil:
		return Key{}, fmt.Errorf("load key %q: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("load key %q: file mode %#o lets other users read the private key: run chmod 600 %s", path, perm, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("load key %q: %w", path, err)
	}
	k, err := ParseKey(string(b))
	if err != nil {
		return Key{}, fmt.Errorf("load key %q: %w", path, err)
	}
	return k, nil
}

func createKey(path string) (Key, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", path, err)
	}
	k, err := GenerateKey()
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", path, err)
	}
	// O_EXCL: if another process created the key meanwhile, fail rather
	// than overwrite an identity that may already be registered.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Key{}, fmt.Errorf("create key %q: %w", path, err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return Key{}, fmt.Errorf("create key %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return Key{}, fmt.Errorf("create key %q: %w", path, err)
	}
	return k, nil
}
