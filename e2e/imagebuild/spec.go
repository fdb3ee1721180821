// Package imagebuild assembles the e2e images (agent, testapp, pause, CoreDNS) as docker-archive tarballs
// with go-containerregistry, from a small spec file (e2e/images/*.files). The agent's spec is the single
// list of what the agent image contains: Dockerfile.agent describes the same image for Docker users and
// a test fails when the two drift.
//
// Spec file format, one directive per line, '#' starts a comment:
//
//	tag        REF                  image reference (no :latest)
//	entrypoint PATH [ARG...]        exec-form entrypoint
//	user       UID:GID              image user; also writes /etc/passwd and /etc/group (root + this user)
//	env        KEY=VALUE            (repeatable)
//	package    NAME                 Debian package the Dockerfile installs; its files are listed with file/glob/link
//	file       DST [SRC]            copy SRC (default: DST on this host); $VARS in SRC are expanded
//	glob       PATTERN              copy every host file matching PATTERN to the same path
//	link       DST TARGET           symlink
//	ldd                             add the shared libraries (and loader) every dynamic ELF file above needs
package imagebuild

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"
)

// Spec is one image's contents and config.
type Spec struct {
	Tag        string
	Entrypoint []string
	User       string // "uid:gid"; empty means root and no passwd files
	Env        []string
	Packages   []string
	Files      []File
	Globs      []string
	Links      []Link
	Ldd        bool
}

// File is one regular file copied into the image.
type File struct{ Dst, Src string }

// Link is one symlink in the image.
type Link struct{ Dst, Target string }

// ParseFile reads a spec file.
func ParseFile(path string) (*Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image spec: %w", err)
	}
	defer f.Close()
	s, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("image spec %s: %w", path, err)
	}
	return s, nil
}

// Parse reads a spec; SRC paths are returned unexpanded.
func Parse(r io.Reader) (*Spec, error) {
	s := &Spec{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		args := f[1:]
		want := func(min, max int) error {
			if len(args) < min || len(args) > max {
				return fmt.Errorf("line %d: %s takes %d..%d arguments, got %d", n, f[0], min, max, len(args))
			}
			return nil
		}
		var err error
		switch f[0] {
		case "tag":
			if err = want(1, 1); err == nil {
				s.Tag = args[0]
			}
		case "entrypoint":
			if err = want(1, 64); err == nil {
				s.Entrypoint = args
			}
		case "user":
			if err = want(1, 1); err == nil {
				s.User = args[0]
			}
		case "env":
			if err = want(1, 1); err == nil {
				s.Env = append(s.Env, args[0])
			}
		case "package":
			if err = want(1, 1); err == nil {
				s.Packages = append(s.Packages, args[0])
			}
		case "file":
			if err = want(1, 2); err == nil {
				src := args[0]
				if len(args) == 2 {
					src = args[1]
				}
				s.Files = append(s.Files, File{Dst: args[0], Src: src})
			}
		case "glob":
			if err = want(1, 1); err == nil {
				s.Globs = append(s.Globs, args[0])
			}
		case "link":
			if err = want(2, 2); err == nil {
				s.Links = append(s.Links, Link{Dst: args[0], Target: args[1]})
			}
		case "ldd":
			if err = want(0, 0); err == nil {
				s.Ldd = true
			}
		default:
			err = fmt.Errorf("line %d: unknown directive %q", n, f[0])
		}
		if err != nil {
			return nil, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if s.Tag == "" {
		return nil, fmt.Errorf("no tag")
	}
	if strings.HasSuffix(s.Tag, ":latest") || !strings.Contains(s.Tag[strings.LastIndex(s.Tag, "/")+1:], ":") {
		return nil, fmt.Errorf("tag %q: use an explicit tag other than :latest (no registry is reachable)", s.Tag)
	}
	if len(s.Entrypoint) == 0 {
		return nil, fmt.Errorf("no entrypoint")
	}
	return s, nil
}

// FileBySource returns the image path of the file copied from src (as written in the spec).
func (s *Spec) FileBySource(src string) (string, bool) {
	for _, f := range s.Files {
		if f.Src == src {
			return f.Dst, true
		}
	}
	return "", false
}
