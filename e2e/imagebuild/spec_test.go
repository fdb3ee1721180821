package imagebuild

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// dockerfileFinal returns the instructions of the Dockerfile's last stage, continuation lines joined.
func dockerfileFinal(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var ins []string
	cur := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasSuffix(l, "\\") {
			cur += strings.TrimSuffix(l, "\\") + " "
			continue
		}
		ins = append(ins, cur+l)
		cur = ""
	}
	last := 0
	for i, l := range ins {
		if strings.HasPrefix(strings.ToUpper(l), "FROM ") {
			last = i
		}
	}
	return ins[last:]
}

func TestAgentSpecMatchesDockerfile(t *testing.T) {
	spec, err := ParseFile("../images/agent.files")
	if err != nil {
		t.Fatal(err)
	}
	var entry []string
	var user, binDst string
	var pkgs []string
	for _, l := range dockerfileFinal(t, "../../Dockerfile.agent") {
		kw, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(kw) {
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &entry); err != nil {
				t.Fatalf("ENTRYPOINT must be exec form: %v", err)
			}
		case "USER":
			user = strings.TrimSpace(rest)
		case "COPY":
			f := strings.Fields(rest)
			if strings.HasSuffix(f[len(f)-2], "/bridgetun-agent") {
				binDst = f[len(f)-1]
			}
		case "RUN":
			m := regexp.MustCompile(`apt-get install ([^&;]+)`).FindStringSubmatch(rest)
			if m != nil {
				for _, w := range strings.Fields(m[1]) {
					if !strings.HasPrefix(w, "-") {
						pkgs = append(pkgs, w)
					}
				}
			}
		}
	}
	if !slices.Equal(entry, spec.Entrypoint) {
		t.Errorf("Dockerfile.agent ENTRYPOINT %q, agent.files entrypoint %q", entry, spec.Entrypoint)
	}
	if user != spec.User {
		t.Errorf("Dockerfile.agent USER %q, agent.files user %q", user, spec.User)
	}
	want, ok := spec.FileBySource("${REPO}/bin/bridgetun-agent")
	if !ok || binDst != want {
		t.Errorf("Dockerfile.agent copies the agent to %q, agent.files to %q", binDst, want)
	}
	if len(spec.Entrypoint) == 0 || spec.Entrypoint[0] != want {
		t.Errorf("entrypoint %q is not the agent binary %q", spec.Entrypoint, want)
	}
	slices.Sort(pkgs)
	sp := slices.Sorted(slices.Values(spec.Packages))
	if !slices.Equal(pkgs, sp) {
		t.Errorf("Dockerfile.agent installs %q, agent.files lists packages %q", pkgs, sp)
	}
	// every relative symlink points at a file the spec copies
	for _, l := range spec.Links {
		target := l.Target
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(l.Dst), target)
		}
		found := slices.ContainsFunc(spec.Files, func(f File) bool { return f.Dst == target })
		if !found {
			t.Errorf("link %s -> %s: target not in the image", l.Dst, l.Target)
		}
	}
}

func TestAllSpecsParse(t *testing.T) {
	specs, _ := filepath.Glob("../images/*.files")
	if len(specs) < 4 {
		t.Fatalf("found %d specs, want agent, testapp, pause, coredns", len(specs))
	}
	for _, p := range specs {
		if _, err := ParseFile(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"latest", "tag x/y:latest\nentrypoint /a\n", ":latest"},
		{"no tag suffix", "tag x/y\nentrypoint /a\n", ":latest"},
		{"unknown", "tag x/y:1\nentrypoint /a\nfoo bar\n", "unknown directive"},
		{"no entrypoint", "tag x/y:1\n", "no entrypoint"},
		{"args", "tag x/y:1\nentrypoint /a\nlink /a\n", "link takes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "app")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec, err := Parse(strings.NewReader("tag example.local/app:v1\nentrypoint /usr/local/bin/app serve\nuser 65532:65532\nfile /usr/local/bin/app ${D}/app\nlink /app usr/local/bin/app\n"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	if err := Build(spec, out, func(s string) string { return strings.ReplaceAll(s, "${D}", dir) }); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cf.Config.Entrypoint, []string{"/usr/local/bin/app", "serve"}; !slices.Equal(got, want) {
		t.Errorf("entrypoint %q, want %q", got, want)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cf.Config.User)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for name, mode := range map[string]int64{"usr/local/bin/app": 0o755, "etc/passwd": 0o644, "tmp/": 0o1777} {
		if h := got[name]; h == nil || h.Mode != mode {
			t.Errorf("%s: got %+v, want mode %o", name, h, mode)
		}
	}
	if h := got["app"]; h == nil || h.Linkname != "usr/local/bin/app" {
		t.Errorf("link app: got %+v", h)
	}
}
