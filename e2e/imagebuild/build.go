package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Build writes the image described by s as a docker-archive tarball to out
// (importable with `ctr -n k8s.io images import`). expand resolves $VARS in file sources.
func Build(s *Spec, out string, expand func(string) string) error {
	if expand == nil {
		expand = os.ExpandEnv
	}
	files := map[string]string{} // dst -> host src
	for _, f := range s.Files {
		files[f.Dst] = expand(f.Src)
	}
	for _, g := range s.Globs {
		m, err := filepath.Glob(g)
		if err != nil || len(m) == 0 {
			return fmt.Errorf("glob %q: no files on this host (is its Debian package installed?)", g)
		}
		for _, p := range m {
			files[p] = p
		}
	}
	links := map[string]string{}
	for _, l := range s.Links {
		links[l.Dst] = l.Target
	}
	if s.Ldd {
		if err := addLibs(files, links); err != nil {
			return err
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	w := &layerWriter{tw: tw, dirs: map[string]bool{}}
	for _, d := range []string{"/etc", "/proc", "/sys", "/dev", "/run", "/var"} {
		w.dir(d, 0o755)
	}
	w.dir("/tmp", 0o1777)
	if s.User != "" {
		uid, gid, ok := strings.Cut(s.User, ":")
		if !ok {
			return fmt.Errorf("user %q: want UID:GID", s.User)
		}
		w.data("/etc/passwd", 0o644, fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n", uid, gid))
		w.data("/etc/group", 0o644, fmt.Sprintf("root:x:0:\nnonroot:x:%s:\n", gid))
		w.dir("/home/nonroot", 0o755)
	}
	for _, dst := range sortedKeys(files) {
		if err := w.file(dst, files[dst]); err != nil {
			return err
		}
	}
	for _, dst := range sortedKeys(links) {
		w.link(dst, links[dst])
	}
	if w.err != nil {
		return w.err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.User = s.User
	cf.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, s.Env...)
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	ref, err := name.NewTag(s.Tag)
	if err != nil {
		return fmt.Errorf("tag %q: %w", s.Tag, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// addLibs adds every shared library the dynamic ELF files need, keeping the library's symlink name.
func addLibs(files, links map[string]string) error {
	for _, dst := range sortedKeys(files) {
		src := files[dst]
		if !isELF(src) {
			continue
		}
		out, err := exec.Command("ldd", src).CombinedOutput()
		if err != nil {
			if bytes.Contains(out, []byte("not a dynamic executable")) {
				continue // static (the Go binaries)
			}
			return fmt.Errorf("ldd %s: %w: %s", src, err, out)
		}
		for _, m := range lddLine.FindAllStringSubmatch(string(out), -1) {
			lib := m[1]
			real, err := filepath.EvalSymlinks(lib)
			if err != nil {
				return fmt.Errorf("resolve %s: %w", lib, err)
			}
			// Debian is merged-/usr: /lib -> usr/lib. Store under /usr and add the top-level compat links.
			files[canonical(real)] = real
			if canonical(lib) != canonical(real) {
				links[canonical(lib)] = canonical(real)
			}
		}
	}
	links["/lib"], links["/lib64"] = "usr/lib", "usr/lib64"
	return nil
}

func canonical(p string) string {
	for _, top := range []string{"/lib/", "/lib64/", "/bin/", "/sbin/"} {
		if strings.HasPrefix(p, top) {
			return "/usr" + p
		}
	}
	return p
}

func isELF(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && string(magic) == "\x7fELF"
}

type layerWriter struct {
	tw   *tar.Writer
	dirs map[string]bool
	err  error
}

func (w *layerWriter) parents(p string) {
	var chain []string
	for d := path.Dir(p); d != "/" && d != "." && !w.dirs[d]; d = path.Dir(d) {
		chain = append([]string{d}, chain...)
	}
	for _, d := range chain {
		w.dir(d, 0o755)
	}
}

func (w *layerWriter) dir(p string, mode int64) {
	if w.err != nil || w.dirs[p] {
		return
	}
	w.parents(p)
	w.dirs[p] = true
	w.err = w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: mode})
}

func (w *layerWriter) data(p string, mode int64, s string) {
	if w.err != nil {
		return
	}
	w.parents(p)
	if w.err = w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode, Size: int64(len(s))}); w.err == nil {
		_, w.err = io.WriteString(w.tw, s)
	}
}

func (w *layerWriter) file(dst, src string) error {
	if w.err != nil {
		return w.err
	}
	st, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("image file %s: %w", dst, err)
	}
	fh, err := os.Open(src)
	if err != nil {
		return err
	}
	defer fh.Close()
	w.parents(dst)
	if err := w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(dst, "/"), Mode: int64(st.Mode().Perm()), Size: st.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(w.tw, fh)
	return err
}

func (w *layerWriter) link(dst, target string) {
	if w.err != nil {
		return
	}
	w.parents(dst)
	w.err = w.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(dst, "/"), Linkname: target, Mode: 0o777})
}

func sortedKeys(m map[string]string) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}
