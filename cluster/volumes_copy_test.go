package cluster

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// tarEntry is one entry of a crafted tar stream.
type tarEntry struct {
	name string
	typ  byte
	mode int64
	body string
	link string
}

func TestCopyExtractTar(t *testing.T) {
	dir := func(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
	file := func(name string, mode int64, body string) tarEntry {
		return tarEntry{name: name, typ: tar.TypeReg, mode: mode, body: body}
	}
	symlink := func(name, target string) tarEntry { return tarEntry{name: name, typ: tar.TypeSymlink, link: target} }

	tests := []struct {
		name    string
		entries []tarEntry
		want    map[string]string // path → "dir", "0644 content" or "-> target"
		wantErr string
	}{{
		name: "a kubelet volume layout",
		entries: []tarEntry{
			dir("./"),
			dir("./..2026_11_25_16_20_00.123456789/"),
			file("./..2026_11_25_16_20_00.123456789/ca.crt", 0o644, "CA"),
			file("./..2026_11_25_16_20_00.123456789/token", 0o200, "tok"),
			symlink("./..data", "..2026_11_25_16_20_00.123456789"),
			symlink("./ca.crt", "..data/ca.crt"),
			symlink("./token", "..data/token"),
			dir("./conf/"),
			file("./conf/app.yaml", 0o640, "k: v"),
			{name: "./conf/hard", typ: tar.TypeLink, link: "./conf/app.yaml", mode: 0o640},
			file("implicit/parent/file", 0o644, "x"),
		},
		want: map[string]string{
			"..2026_11_25_16_20_00.123456789":        "dir",
			"..2026_11_25_16_20_00.123456789/ca.crt": "0644 CA",
			"..2026_11_25_16_20_00.123456789/token":  "0600 tok",
			"..data":                                 "-> ..2026_11_25_16_20_00.123456789",
			"ca.crt":                                 "-> ..data/ca.crt",
			"token":                                  "-> ..data/token",
			"conf":                                   "dir",
			"conf/app.yaml":                          "0640 k: v",
			"conf/hard":                              "0640 k: v",
			"implicit":                               "dir",
			"implicit/parent":                        "dir",
			"implicit/parent/file":                   "0644 x",
		},
	}, {
		name: "symlinks leaving the directory and special files are skipped",
		entries: []tarEntry{
			symlink("abs", "/etc/passwd"),
			symlink("up", "../../secret"),
			symlink("sneaky", "sub/../.."),
			{name: "null", typ: tar.TypeChar},
			{name: "fifo", typ: tar.TypeFifo},
			{name: "outside-link", typ: tar.TypeLink, link: "../x"},
			file("abs/inside", 0o644, "stays inside"), // abs was skipped: a plain directory now
		},
		want: map[string]string{"abs": "dir", "abs/inside": "0644 stays inside"},
	}, {
		name: "a later file replaces a symlink rather than writing through it",
		entries: []tarEntry{
			symlink("f", "target"),
			file("f", 0o644, "mine"),
		},
		want: map[string]string{"f": "0644 mine"},
	}, {
		name:    "absolute path",
		entries: []tarEntry{file("/etc/evil", 0o644, "x")},
		wantErr: `unsafe path "/etc/evil"`,
	}, {
		name:    "dot-dot path",
		entries: []tarEntry{file("./a/../../evil", 0o644, "x")},
		wantErr: `unsafe path "./a/../../evil"`,
	}, {
		name:    "truncated stream",
		entries: nil, // replaced by garbage below
		wantErr: "read tar stream",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := tarStream(t, tt.entries)
			if tt.entries == nil {
				stream = bytes.Repeat([]byte("garbage"), 100)
			}
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			err := extractTar(bytes.NewReader(stream), dst)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(parent); len(ents) != 1 {
				t.Errorf("got %d entries next to dst, want only dst: something was written outside", len(ents))
			}
			if tt.wantErr != "" {
				return
			}
			if diff := cmp.Diff(tt.want, treeOf(t, dst)); diff != "" {
				t.Errorf("extracted tree (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCopyHeadBuffer(t *testing.T) {
	b := &headBuffer{max: 8}
	for _, s := range []string{"tar: ", "boom\nmore", "ignored"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Errorf("Write(%q): got %d, %v; want %d, nil", s, n, err, len(s))
		}
	}
	if got, want := b.String(), "tar: boo"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := firstLine(" tar: x\ny\n"), "tar: x"; got != want {
		t.Errorf("firstLine: got %q, want %q", got, want)
	}
}

func tarStream(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// treeOf lists dir without following symlinks.
func treeOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.IsDir():
			out[rel] = "dir"
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "-> " + target
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			out[rel] = fmt.Sprintf("%04o %s", fi.Mode().Perm(), b)
		default:
			return errors.New("unexpected file type at " + rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
