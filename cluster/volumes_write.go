package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// payload is a volume's content: slash-separated relative path → file.
type payload map[string]payloadFile

type payloadFile struct {
	data []byte
	mode fs.FileMode
}

func (p payload) equal(q payload) bool {
	if p == nil || q == nil {
		return p == nil && q == nil
	}
	return maps.EqualFunc(p, q, func(a, b payloadFile) bool { return a.mode == b.mode && bytes.Equal(a.data, b.data) })
}

// defaultVolumeMode is the API default of every defaultMode field.
const defaultVolumeMode = 0o644

// payload builds the target's files from the recorded objects; m.mu is held
// (or the mirror is not shared yet).
func (m *Mirror) payload(t *mirrorTarget) (payload, error) {
	out := payload{}
	v := &t.vol
	add := func(p string, data []byte, mode *int32, def *int32) error {
		clean, err := volumePath(p)
		if err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		if _, dup := out[clean]; dup {
			return fmt.Errorf("volume %q: two sources write path %q", v.Name, clean)
		}
		out[clean] = payloadFile{data: data, mode: fileMode(mode, def)}
		return nil
	}
	switch {
	case v.ConfigMap != nil:
		s := v.ConfigMap
		return out, m.addKeys(add, v.Name, objRef{kindConfigMap, s.Name}, s.Items, s.DefaultMode, optional(s.Optional))
	case v.Secret != nil:
		s := v.Secret
		return out, m.addKeys(add, v.Name, objRef{kindSecret, s.SecretName}, s.Items, s.DefaultMode, optional(s.Optional))
	case v.DownwardAPI != nil:
		return out, m.addDownward(add, v.Name, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	case v.Projected != nil:
		def := v.Projected.DefaultMode
		for _, s := range v.Projected.Sources {
			var err error
			switch {
			case s.ConfigMap != nil:
				err = m.addKeys(add, v.Name, objRef{kindConfigMap, s.ConfigMap.Name}, s.ConfigMap.Items, def, optional(s.ConfigMap.Optional))
			case s.Secret != nil:
				err = m.addKeys(add, v.Name, objRef{kindSecret, s.Secret.Name}, s.Secret.Items, def, optional(s.Secret.Optional))
			case s.DownwardAPI != nil:
				err = m.addDownward(add, v.Name, s.DownwardAPI.Items, def)
			}
			if err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("volume %q: kind %s is not mirrored", v.Name, volumeKind(v))
}

type addFunc func(p string, data []byte, mode, def *int32) error

// addKeys adds a ConfigMap's or Secret's keys (all of them, or the listed
// items) the way the kubelet's configmap and secret volume plugins do.
func (m *Mirror) addKeys(add addFunc, vol string, r objRef, items []corev1.KeyToPath, def *int32, opt bool) error {
	var data map[string][]byte
	switch o := m.objects[r].(type) {
	case *corev1.ConfigMap:
		data = make(map[string][]byte, len(o.Data)+len(o.BinaryData))
		for k, v := range o.Data {
			data[k] = []byte(v)
		}
		maps.Copy(data, o.BinaryData)
	case *corev1.Secret:
		data = o.Data
	case nil:
		if opt {
			return nil // the kubelet mounts an empty volume
		}
		return fmt.Errorf("volume %q: %s %s/%s not found (and not optional)", vol, r.kind, m.namespace, r.name)
	}
	if len(items) == 0 {
		for _, k := range slices.Sorted(maps.Keys(data)) {
			if err := add(k, data[k], nil, def); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		d, ok := data[it.Key]
		if !ok {
			if opt {
				continue
			}
			return fmt.Errorf("volume %q: %s %s/%s has no key %q", vol, r.kind, m.namespace, r.name, it.Key)
		}
		if err := add(it.Path, d, it.Mode, def); err != nil {
			return err
		}
	}
	return nil
}

// addDownward adds downwardAPI items. It accepts every field the env
// resolution does (spec.nodeName, status.podIP, ...), more than the API
// allows in volumes. A resource whose value would come from the node (no
// limit set) is left out with a warning rather than failing the volume.
func (m *Mirror) addDownward(add addFunc, vol string, items []corev1.DownwardAPIVolumeFile, def *int32) error {
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = downwardField(m.pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			name := it.ResourceFieldRef.ContainerName
			c := findContainer(m.pod, name)
			if c == nil {
				return fmt.Errorf("volume %q: item %q: pod has no container %q", vol, it.Path, name)
			}
			if val, err = resourceValue(c, it.ResourceFieldRef); err != nil {
				m.log.Warn("downwardAPI file left out", "volume", vol, "path", it.Path, "err", err)
				continue
			}
		default:
			err = errors.New("neither fieldRef nor resourceFieldRef is set")
		}
		if err != nil {
			return fmt.Errorf("volume %q: item %q: %w", vol, it.Path, err)
		}
		if err := add(it.Path, []byte(val), it.Mode, def); err != nil {
			return err
		}
	}
	return nil
}

// downwardField adds the whole-map fields that only volumes offer to
// fieldValue's.
func downwardField(pod *corev1.Pod, p string) (string, error) {
	switch p {
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	return fieldValue(pod, p)
}

// formatMap renders labels or annotations as the kubelet does
// (pkg/fieldpath FormatMap): sorted key="quoted value" lines.
func formatMap(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if b.Len() > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(m[k]))
	}
	return b.String()
}

// volumePath validates an item path as the kubelet's atomic writer does:
// relative, no ".." element, not starting with "..", and returns it cleaned.
func volumePath(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty item path")
	}
	if path.IsAbs(p) {
		return "", fmt.Errorf("item path %q must be relative", p)
	}
	elems := strings.Split(p, "/")
	if slices.Contains(elems, "..") {
		return "", fmt.Errorf("item path %q must not contain '..'", p)
	}
	if strings.HasPrefix(elems[0], "..") {
		return "", fmt.Errorf("item path %q must not start with '..'", p)
	}
	clean := path.Clean(p)
	if clean == "." {
		return "", fmt.Errorf("item path %q names the volume itself", p)
	}
	return clean, nil
}

// fileMode applies an item's mode, else the volume's, else the API default;
// the owner can always read, since the owner here is the user, not root.
func fileMode(mode, def *int32) fs.FileMode {
	v := int32(defaultVolumeMode)
	if def != nil {
		v = *def
	}
	if mode != nil {
		v = *mode
	}
	return fs.FileMode(v)&fs.ModePerm | 0o400
}

// The kubelet's layout in a volume directory:
//
//	..2026_11_25_16_20_00.123456789/   the payload, one directory per version
//	..data -> ..2026_11_25_16_20_00.123456789
//	key -> ..data/key                  one symlink per top-level path
//
// A reader that opens key sees either the old or the new version, never a
// mix: the version is switched by renaming a new ..data symlink over the old.
const (
	dataDirName    = "..data"
	dataDirTmpName = "..data_tmp"
	tsLayout       = "..2006_01_02_15_04_05.000000000"
)

var tsDirName = regexp.MustCompile(`^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d{9}$`)

// write replaces the target's volume directory content with p.
func (m *Mirror) write(t *mirrorTarget, p payload) error {
	root, err := os.OpenRoot(m.dir)
	if err != nil {
		return fmt.Errorf("volume %q: %w", t.mount.Name, err)
	}
	defer root.Close()
	if err := writeAtomic(root, t.rel, p, time.Now()); err != nil {
		return fmt.Errorf("volume %q: write %s: %w", t.mount.Name, t.mount.LocalPath, err)
	}
	t.written = p
	return nil
}

// writeAtomic writes p into dir (relative to root) with the kubelet's
// layout. Everything goes through root, so nothing lands outside it even if
// the directory holds a symlink planted by someone else.
func writeAtomic(root *os.Root, dir string, p payload, now time.Time) error {
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// 1. A fresh, hidden version directory, filled before anyone can see it.
	var ts string
	for i := 0; ; i++ {
		ts = now.Add(time.Duration(i)).UTC().Format(tsLayout)
		err := root.Mkdir(path.Join(dir, ts), 0o700)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return err
		}
	}
	tsPath := path.Join(dir, ts)
	if err := fillDir(root, tsPath, p); err != nil {
		_ = root.RemoveAll(tsPath)
		return err
	}
	if err := root.Chmod(tsPath, 0o755); err != nil {
		_ = root.RemoveAll(tsPath)
		return err
	}
	// 2. Swap ..data to it atomically.
	tmp := path.Join(dir, dataDirTmpName)
	if err := root.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := root.Symlink(ts, tmp); err != nil {
		_ = root.RemoveAll(tsPath)
		return err
	}
	if err := root.Rename(tmp, path.Join(dir, dataDirName)); err != nil {
		_ = root.Remove(tmp)
		_ = root.RemoveAll(tsPath)
		return err
	}
	// 3. The user-visible symlinks for the top-level paths.
	top := map[string]bool{}
	for k := range p {
		first, _, _ := strings.Cut(k, "/")
		top[first] = true
	}
	for _, name := range slices.Sorted(maps.Keys(top)) {
		if err := ensureSymlink(root, path.Join(dir, name), path.Join(dataDirName, name)); err != nil {
			return err
		}
	}
	// 4. Remove older versions (also ones a crashed run left) and the
	// symlinks of paths that disappeared.
	ents, err := readDir(root, dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		full := path.Join(dir, name)
		switch {
		case name != ts && e.IsDir() && tsDirName.MatchString(name):
			if err := root.RemoveAll(full); err != nil {
				return err
			}
		case e.Type()&fs.ModeSymlink != 0 && !top[name]:
			if target, err := root.Readlink(full); err == nil && target == path.Join(dataDirName, name) {
				if err := root.Remove(full); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// fillDir writes the payload's files under dir.
func fillDir(root *os.Root, dir string, p payload) error {
	for _, k := range slices.Sorted(maps.Keys(p)) {
		f := p[k]
		name := path.Join(dir, k)
		if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
			return err
		}
		if err := root.WriteFile(name, f.data, f.mode); err != nil {
			return err
		}
		if err := root.Chmod(name, f.mode); err != nil { // WriteFile's mode is subject to the umask
			return err
		}
	}
	return nil
}

// ensureSymlink makes name a symlink to target, replacing a symlink to
// elsewhere but nothing else.
func ensureSymlink(root *os.Root, name, target string) error {
	fi, err := root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return root.Symlink(target, name)
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink == 0:
		return fmt.Errorf("%s exists and is not a symlink (another mount inside this volume?)", name)
	}
	if cur, err := root.Readlink(name); err == nil && cur == target {
		return nil
	}
	if err := root.Remove(name); err != nil {
		return err
	}
	return root.Symlink(target, name)
}

func readDir(root *os.Root, dir string) ([]fs.DirEntry, error) {
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}
