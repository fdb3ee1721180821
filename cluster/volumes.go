package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// MirrorConfig says which container's volumes to mirror and where.
type MirrorConfig struct {
	Client    kubernetes.Interface // reads and watches the pod, ConfigMaps and Secrets; required
	Pod       *corev1.Pod          // the pod as last read; required (copied, not modified)
	Container string               // the container whose volumeMounts are mirrored; required
	Dir       string               // root; a mount at /etc/api lands at Dir/etc/api; created 0700; required
	Log       *slog.Logger         // nil discards
}

// MountedVolume is one volumeMount of the container and where it is mirrored.
type MountedVolume struct {
	Name      string // the pod's volume name
	MountPath string // the mount path in the container
	LocalPath string // Dir joined with MountPath; empty for a skipped volume
	Kind      string // configMap, secret, downwardAPI or projected (others for skipped volumes: emptyDir, persistentVolumeClaim, ...)
}

// Mirror replicates a container's ConfigMap, Secret, downwardAPI and
// projected volumes under a local directory, with the kubelet's on-disk
// layout (pkg/volume/util/atomic_writer.go), so that a program reading
// Dir/etc/api/key sees what the container sees at /etc/api/key, and keeps
// them current while Run runs.
type Mirror struct {
	client    kubernetes.Interface
	namespace string
	dir       string // absolute
	log       *slog.Logger
	targets   []*mirrorTarget
	skipped   []MountedVolume
	watched   []objRef // every object some target depends on, sorted

	backoffMin, backoffMax time.Duration
	watching               func(objRef) // test hook: a watch on the object is established; nil in production

	mu      sync.Mutex // guards pod, objects and the targets' written payloads; held while writing
	pod     *corev1.Pod
	objects map[objRef]runtime.Object // referenced ConfigMaps and Secrets that exist
}

// objRef names an object a volume depends on.
type objRef struct {
	kind string // kindConfigMap, kindSecret or kindPod
	name string
}

const (
	kindConfigMap   = "configMap"
	kindSecret      = "secret"
	kindDownwardAPI = "downwardAPI"
	kindProjected   = "projected"
	kindPod         = "pod"
)

// mirrorTarget is one mount of a supported volume.
type mirrorTarget struct {
	mount   MountedVolume
	rel     string // LocalPath relative to Dir, slash-separated
	vol     corev1.Volume
	deps    []objRef
	written payload // what the volume directory holds now
}

// NewMirror writes every supported volume once and returns the mirror; other
// volume kinds (emptyDir, PVC, hostPath, ...) are listed in Skipped with their
// kind. Errors name the volume and the object. A subPath mount is mirrored as
// the whole volume at the mount path: the local program sees a directory where
// the container sees a single file or subdirectory.
func NewMirror(ctx context.Context, cfg MirrorConfig) (*Mirror, error) {
	if cfg.Client == nil || cfg.Pod == nil || cfg.Container == "" || cfg.Dir == "" {
		return nil, errors.New("mirror volumes: Client, Pod, Container and Dir are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	pod := cfg.Pod.DeepCopy()
	log = obs.Component(log, "volume_mirror").With("pod", pod.Namespace+"/"+pod.Name, "container", cfg.Container)
	c := findContainer(pod, cfg.Container)
	if c == nil {
		return nil, fmt.Errorf("pod %s/%s has no container %q", pod.Namespace, pod.Name, cfg.Container)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("mirror volumes into %q: %w", cfg.Dir, err)
	}
	m := &Mirror{
		client:     cfg.Client,
		namespace:  pod.Namespace,
		dir:        dir,
		log:        log,
		backoffMin: time.Second,
		backoffMax: 30 * time.Second,
		pod:        pod,
		objects:    map[objRef]runtime.Object{},
	}
	vols := map[string]*corev1.Volume{}
	for i := range pod.Spec.Volumes {
		vols[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	deps := map[objRef]bool{}
	for _, vm := range c.VolumeMounts {
		v := vols[vm.Name]
		if v == nil {
			return nil, fmt.Errorf("container %q mounts volume %q, which pod %s/%s does not define", c.Name, vm.Name, pod.Namespace, pod.Name)
		}
		mv := MountedVolume{Name: v.Name, MountPath: vm.MountPath, Kind: volumeKind(v)}
		switch mv.Kind {
		case kindConfigMap, kindSecret, kindDownwardAPI, kindProjected:
		default:
			log.Info("volume not mirrored", "volume", v.Name, "kind", mv.Kind, "mount_path", vm.MountPath)
			m.skipped = append(m.skipped, mv)
			continue
		}
		rel := strings.TrimPrefix(path.Clean("/"+vm.MountPath), "/")
		if rel == "" {
			return nil, fmt.Errorf("volume %q: cannot mirror a mount at %q", v.Name, vm.MountPath)
		}
		mv.LocalPath = filepath.Join(dir, filepath.FromSlash(rel))
		t := &mirrorTarget{mount: mv, rel: rel, vol: *v, deps: volumeDeps(v, pod.Name)}
		if vm.SubPath != "" || vm.SubPathExpr != "" {
			log.Info("subPath mount mirrored as the whole volume", "volume", v.Name, "mount_path", vm.MountPath, "sub_path", vm.SubPath+vm.SubPathExpr)
		}
		logSkippedSources(log, v)
		for _, d := range t.deps {
			deps[d] = true
		}
		m.targets = append(m.targets, t)
	}
	for d := range deps {
		m.watched = append(m.watched, d)
	}
	slices.SortFunc(m.watched, func(a, b objRef) int { return strings.Compare(a.kind+"/"+a.name, b.kind+"/"+b.name) })

	// Read everything and build every payload before writing anything, so
	// that the usual errors (a missing object, a bad path) leave no files.
	for _, d := range m.watched {
		if d.kind == kindPod {
			continue
		}
		obj, err := m.get(ctx, d)
		if err != nil {
			return nil, fmt.Errorf("volume %q: get %s %s/%s: %w", m.firstUser(d), d.kind, m.namespace, d.name, err)
		}
		if obj != nil {
			m.objects[d] = obj
		}
	}
	payloads := make([]payload, len(m.targets))
	for i, t := range m.targets {
		if payloads[i], err = m.payload(t); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create mirror directory: %w", err)
	}
	var created []string
	for i, t := range m.targets {
		if _, err := os.Lstat(t.mount.LocalPath); errors.Is(err, os.ErrNotExist) {
			created = append(created, t.mount.LocalPath)
		}
		if err := m.write(t, payloads[i]); err != nil {
			for _, p := range created {
				_ = os.RemoveAll(p)
			}
			return nil, err
		}
		log.Debug("volume mirrored", "volume", t.mount.Name, "kind", t.mount.Kind, "local_path", t.mount.LocalPath, "files", len(payloads[i]))
	}
	return m, nil
}

// Mounted lists the mirrored mounts, in the container's mount order.
func (m *Mirror) Mounted() []MountedVolume {
	out := make([]MountedVolume, len(m.targets))
	for i, t := range m.targets {
		out[i] = t.mount
	}
	return out
}

// Skipped lists the mounts of volume kinds that are not mirrored.
func (m *Mirror) Skipped() []MountedVolume { return slices.Clone(m.skipped) }

// Run keeps the files current until ctx ends: it watches the referenced
// ConfigMaps and Secrets (each by name, with a metadata.name field selector)
// and the pod (for downwardAPI), and rewrites a changed volume atomically. A
// watch that fails or ends is re-listed and re-watched with backoff; Run
// never gives up while ctx lives, and returns nil after every goroutine it
// started has exited. A change that cannot be applied (a non-optional
// ConfigMap deleted, say) is logged and the previous files stay, as the
// kubelet does.
func (m *Mirror) Run(ctx context.Context) error {
	var g errgroup.Group
	for _, r := range m.watched {
		g.Go(func() error {
			m.follow(ctx, r)
			return nil
		})
	}
	<-ctx.Done() // also when there is nothing to watch
	return g.Wait()
}

// follow lists and watches one object until ctx ends.
func (m *Mirror) follow(ctx context.Context, r objRef) {
	delay := m.backoffMin
	for {
		start := time.Now()
		err := m.listAndWatch(ctx, r)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) >= m.backoffMax {
			delay = m.backoffMin // the watch was healthy for a while: start over
		}
		if err != nil {
			m.log.Warn("watch failed", "kind", r.kind, "name", r.name, "retry_in", delay, "err", err)
		} else {
			m.log.Debug("watch ended", "kind", r.kind, "name", r.name, "retry_in", delay)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, m.backoffMax)
	}
}

// listAndWatch reads the object, applies it, then applies watch events
// until the watch ends (nil) or fails.
func (m *Mirror) listAndWatch(ctx context.Context, r objRef) error {
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", r.name).String()}
	obj, rv, err := m.list(ctx, r, opts)
	if err != nil {
		return fmt.Errorf("list %s %s/%s: %w", r.kind, m.namespace, r.name, err)
	}
	m.update(r, obj)
	opts.ResourceVersion = rv
	opts.AllowWatchBookmarks = true
	var w watch.Interface
	switch r.kind {
	case kindConfigMap:
		w, err = m.client.CoreV1().ConfigMaps(m.namespace).Watch(ctx, opts)
	case kindSecret:
		w, err = m.client.CoreV1().Secrets(m.namespace).Watch(ctx, opts)
	case kindPod:
		w, err = m.client.CoreV1().Pods(m.namespace).Watch(ctx, opts)
	}
	if err != nil {
		return fmt.Errorf("watch %s %s/%s: %w", r.kind, m.namespace, r.name, err)
	}
	defer w.Stop()
	if m.watching != nil {
		m.watching(r)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil
			}
			switch ev.Type {
			case watch.Error:
				return fmt.Errorf("watch %s %s/%s: %w", r.kind, m.namespace, r.name, apierrors.FromObject(ev.Object))
			case watch.Bookmark:
				continue
			}
			if o, ok := ev.Object.(metav1.Object); !ok || o.GetName() != r.name {
				continue // a fake or proxy that ignores the field selector
			}
			if ev.Type == watch.Deleted {
				m.update(r, nil)
			} else {
				m.update(r, ev.Object)
			}
		}
	}
}

// named returns the item called name as an object, or nil.
func named[T any, P interface {
	*T
	runtime.Object
	GetName() string
}](items []T, name string) runtime.Object {
	for i := range items {
		if p := P(&items[i]); p.GetName() == name {
			return p
		}
	}
	return nil
}

// list returns the object (nil when it does not exist) and the list's
// resource version to watch from.
func (m *Mirror) list(ctx context.Context, r objRef, opts metav1.ListOptions) (runtime.Object, string, error) {
	switch r.kind {
	case kindConfigMap:
		l, err := m.client.CoreV1().ConfigMaps(m.namespace).List(ctx, opts)
		if err != nil {
			return nil, "", err
		}
		return named(l.Items, r.name), l.ResourceVersion, nil
	case kindSecret:
		l, err := m.client.CoreV1().Secrets(m.namespace).List(ctx, opts)
		if err != nil {
			return nil, "", err
		}
		return named(l.Items, r.name), l.ResourceVersion, nil
	case kindPod:
		l, err := m.client.CoreV1().Pods(m.namespace).List(ctx, opts)
		if err != nil {
			return nil, "", err
		}
		return named(l.Items, r.name), l.ResourceVersion, nil
	}
	return nil, "", fmt.Errorf("unknown kind %q", r.kind)
}

// get reads a ConfigMap or Secret; nil when it does not exist.
func (m *Mirror) get(ctx context.Context, r objRef) (runtime.Object, error) {
	var obj runtime.Object
	var err error
	switch r.kind {
	case kindConfigMap:
		obj, err = m.client.CoreV1().ConfigMaps(m.namespace).Get(ctx, r.name, metav1.GetOptions{})
	case kindSecret:
		obj, err = m.client.CoreV1().Secrets(m.namespace).Get(ctx, r.name, metav1.GetOptions{})
	default:
		return nil, fmt.Errorf("unknown kind %q", r.kind)
	}
	if notFound(err) {
		return nil, nil
	}
	return obj, err
}

// update records the object's new state (nil: deleted) and rewrites the
// volumes that depend on it and changed.
func (m *Mirror) update(r objRef, obj runtime.Object) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case r.kind == kindPod:
		p, ok := obj.(*corev1.Pod)
		if !ok {
			m.log.Warn("pod is gone; downwardAPI files keep their last values", "name", r.name)
			return
		}
		m.pod = p
	case obj == nil:
		delete(m.objects, r)
	default:
		m.objects[r] = obj
	}
	for _, t := range m.targets {
		if !slices.Contains(t.deps, r) {
			continue
		}
		p, err := m.payload(t)
		if err != nil {
			m.log.Warn("volume not updated; keeping the previous files", "volume", t.mount.Name, "err", err)
			continue
		}
		if p.equal(t.written) {
			continue
		}
		if err := m.write(t, p); err != nil {
			m.log.Error("volume not updated", "volume", t.mount.Name, "err", err)
			continue
		}
		m.log.Info("volume updated", "volume", t.mount.Name, "local_path", t.mount.LocalPath, "files", len(p))
	}
}

// firstUser names the first volume that depends on r, for error messages.
func (m *Mirror) firstUser(r objRef) string {
	for _, t := range m.targets {
		if slices.Contains(t.deps, r) {
			return t.mount.Name
		}
	}
	return ""
}

func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// volumeDeps lists the objects whose changes change the volume's files.
func volumeDeps(v *corev1.Volume, pod string) []objRef {
	var out []objRef
	add := func(r objRef) {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	switch {
	case v.ConfigMap != nil:
		add(objRef{kindConfigMap, v.ConfigMap.Name})
	case v.Secret != nil:
		add(objRef{kindSecret, v.Secret.SecretName})
	case v.DownwardAPI != nil:
		add(objRef{kindPod, pod})
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			switch {
			case s.ConfigMap != nil:
				add(objRef{kindConfigMap, s.ConfigMap.Name})
			case s.Secret != nil:
				add(objRef{kindSecret, s.Secret.Name})
			case s.DownwardAPI != nil:
				add(objRef{kindPod, pod})
			}
		}
	}
	return out
}

// logSkippedSources notes the projected sources that are not mirrored:
// their content is minted by the kubelet for this very pod.
func logSkippedSources(log *slog.Logger, v *corev1.Volume) {
	if v.Projected == nil {
		return
	}
	for _, s := range v.Projected.Sources {
		var kind string
		switch {
		case s.ServiceAccountToken != nil:
			kind = "serviceAccountToken"
		case s.ClusterTrustBundle != nil:
			kind = "clusterTrustBundle"
		case s.PodCertificate != nil:
			kind = "podCertificate"
		default:
			continue
		}
		log.Info("projected source not mirrored", "volume", v.Name, "source", kind)
	}
}

// volumeKind names the volume's source the way the pod spec spells it.
func volumeKind(v *corev1.Volume) string {
	s := v.VolumeSource
	switch {
	case s.ConfigMap != nil:
		return kindConfigMap
	case s.Secret != nil:
		return kindSecret
	case s.DownwardAPI != nil:
		return kindDownwardAPI
	case s.Projected != nil:
		return kindProjected
	case s.EmptyDir != nil:
		return "emptyDir"
	case s.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case s.HostPath != nil:
		return "hostPath"
	case s.Ephemeral != nil:
		return "ephemeral"
	case s.CSI != nil:
		return "csi"
	case s.NFS != nil:
		return "nfs"
	case s.Image != nil:
		return "image"
	case s.ISCSI != nil:
		return "iscsi"
	case s.GitRepo != nil:
		return "gitRepo"
	}
	return "other"
}
