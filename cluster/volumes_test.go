package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestMirrorInitial(t *testing.T) {
	yes := true
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "app"},
		Data: map[string]string{"a": "1", "b.yaml": "x: y"}, BinaryData: map[string][]byte{"bin": {0, 1, 2}}}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec", Namespace: "app"},
		Data: map[string][]byte{"tls.key": {0xff, 0x00}, "user": []byte("admin")}}
	cmVol := func(name string, src corev1.ConfigMapVolumeSource) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{ConfigMap: &src}}
	}
	cmRef := func(name string) corev1.LocalObjectReference { return corev1.LocalObjectReference{Name: name} }
	field := func(p string) *corev1.ObjectFieldSelector { return &corev1.ObjectFieldSelector{FieldPath: p} }
	mount := func(name, at string) corev1.VolumeMount { return corev1.VolumeMount{Name: name, MountPath: at} }

	tests := []struct {
		name        string
		volumes     []corev1.Volume
		mounts      []corev1.VolumeMount
		want        map[string]map[string]string // mount path → path → "mode content"
		wantSkipped []MountedVolume
		wantErr     []string
	}{{
		name:    "configMap all keys with binaryData and defaultMode",
		volumes: []corev1.Volume{cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), DefaultMode: modePtr(0o440)})},
		mounts:  []corev1.VolumeMount{mount("cfg", "/etc/cfg")},
		want: map[string]map[string]string{"/etc/cfg": {
			"a": "0440 1", "b.yaml": "0440 x: y", "bin": "0440 \x00\x01\x02",
		}},
	}, {
		name: "configMap items with modes and nested paths",
		volumes: []corev1.Volume{cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{
			{Key: "a", Path: "nested/dir/a.txt", Mode: modePtr(0o600)},
			{Key: "b.yaml", Path: "b"},
		}})},
		mounts: []corev1.VolumeMount{mount("cfg", "/etc/cfg/")},
		want:   map[string]map[string]string{"/etc/cfg/": {"nested/dir/a.txt": "0600 1", "b": "0644 x: y"}},
	}, {
		name:    "secret raw bytes, owner read added to the mode",
		volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec", DefaultMode: modePtr(0o040)}}}},
		mounts:  []corev1.VolumeMount{mount("creds", "/var/run/creds")},
		want:    map[string]map[string]string{"/var/run/creds": {"tls.key": "0440 \xff\x00", "user": "0440 admin"}},
	}, {
		name: "optional missing configMap and optional missing key",
		volumes: []corev1.Volume{
			cmVol("opt", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("nope"), Optional: &yes}),
			cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Optional: &yes,
				Items: []corev1.KeyToPath{{Key: "absent", Path: "x"}, {Key: "a", Path: "a"}}}),
		},
		mounts: []corev1.VolumeMount{mount("opt", "/opt"), mount("cfg", "/cfg")},
		want:   map[string]map[string]string{"/opt": {}, "/cfg": {"a": "0644 1"}},
	}, {
		name:    "missing non-optional secret",
		volumes: []corev1.Volume{{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "nope"}}}},
		mounts:  []corev1.VolumeMount{mount("creds", "/creds")},
		wantErr: []string{`volume "creds"`, "secret app/nope not found"},
	}, {
		name:    "missing non-optional key",
		volumes: []corev1.Volume{cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "absent", Path: "x"}}})},
		mounts:  []corev1.VolumeMount{mount("cfg", "/cfg")},
		wantErr: []string{`volume "cfg"`, `configMap app/cfg has no key "absent"`},
	}, {
		name:    "escaping item path",
		volumes: []corev1.Volume{cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "a", Path: "sub/../../evil"}}})},
		mounts:  []corev1.VolumeMount{mount("cfg", "/cfg")},
		wantErr: []string{`volume "cfg"`, `"sub/../../evil" must not contain '..'`},
	}, {
		name:    "absolute item path",
		volumes: []corev1.Volume{cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "a", Path: "/etc/passwd"}}})},
		mounts:  []corev1.VolumeMount{mount("cfg", "/cfg")},
		wantErr: []string{`volume "cfg"`, "must be relative"},
	}, {
		name: "downwardAPI",
		volumes: []corev1.Volume{{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "name", FieldRef: field("metadata.name")},
			{Path: "labels", FieldRef: field("metadata.labels"), Mode: modePtr(0o400)},
			{Path: "annotations", FieldRef: field("metadata.annotations")},
			{Path: "app", FieldRef: field("metadata.labels['app']")},
			{Path: "ip", FieldRef: field("status.podIP")},
			{Path: "mem", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "api", Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}},
			{Path: "cpu", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "api", Resource: "limits.cpu"}}, // unset: left out
		}}}}},
		mounts: []corev1.VolumeMount{mount("info", "/etc/podinfo")},
		want: map[string]map[string]string{"/etc/podinfo": {
			"name": "0644 api-1", "labels": "0400 app=\"api\"\ntier=\"web\"", "annotations": `0644 note="a \"quoted\" value"`,
			"app": "0644 api", "ip": "0644 10.1.2.3", "mem": "0644 96",
		}},
	}, {
		name: "projected merges sources and skips the token",
		volumes: []corev1.Volume{{Name: "all", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: modePtr(0o640), Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "a", Path: "cfg/a"}}}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: cmRef("sec")}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "ns", FieldRef: field("metadata.namespace"), Mode: modePtr(0o444)}}}},
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: cmRef("nope"), Optional: &yes}},
		}}}}},
		mounts: []corev1.VolumeMount{mount("all", "/var/run/all")},
		want: map[string]map[string]string{"/var/run/all": {
			"cfg/a": "0640 1", "tls.key": "0640 \xff\x00", "user": "0640 admin", "ns": "0444 app",
		}},
	}, {
		name: "projected path conflict",
		volumes: []corev1.Volume{{Name: "all", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "a", Path: "user"}}}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: cmRef("sec")}},
		}}}}},
		mounts:  []corev1.VolumeMount{mount("all", "/all")},
		wantErr: []string{`volume "all"`, `two sources write path "user"`},
	}, {
		name: "other kinds skipped, subPath mirrors the whole volume",
		volumes: []corev1.Volume{
			{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}},
			cmVol("cfg", corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("cfg"), Items: []corev1.KeyToPath{{Key: "a", Path: "a"}}}),
		},
		mounts: []corev1.VolumeMount{mount("scratch", "/tmp"), mount("data", "/data"), {Name: "cfg", MountPath: "/etc/a.conf", SubPath: "a"}},
		want:   map[string]map[string]string{"/etc/a.conf": {"a": "0644 1"}},
		wantSkipped: []MountedVolume{
			{Name: "scratch", MountPath: "/tmp", Kind: "emptyDir"},
			{Name: "data", MountPath: "/data", Kind: "persistentVolumeClaim"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod(tt.volumes, tt.mounts)
			client := fake.NewClientset(cm, sec, pod)
			dir := filepath.Join(t.TempDir(), "mirror")
			m, err := NewMirror(t.Context(), MirrorConfig{Client: client, Pod: pod, Container: "api", Dir: dir, Log: testkit.Logger(t)})
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("got no error, want one containing %q", tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("got error %q, want it to contain %q", err, s)
					}
				}
				if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("got %s created (err %v), want nothing written on error", dir, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]map[string]string{}
			for _, mv := range m.Mounted() {
				if want := filepath.Join(dir, filepath.FromSlash(mv.MountPath)); mv.LocalPath != want {
					t.Errorf("volume %s: got LocalPath %s, want %s", mv.Name, mv.LocalPath, want)
				}
				got[mv.MountPath] = volumeFiles(t, mv.LocalPath)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantSkipped, m.Skipped()); diff != "" {
				t.Errorf("Skipped() (-want +got):\n%s", diff)
			}
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("got Dir mode %v (err %v), want 0700", fi.Mode().Perm(), err)
			}
		})
	}
}

func TestMirrorLayout(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "app"}, Data: map[string]string{"a": "1", "b": "2"}}
	pod := testPod([]corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
		Items:                []corev1.KeyToPath{{Key: "a", Path: "a"}, {Key: "b", Path: "sub/b"}},
	}}}}, []corev1.VolumeMount{{Name: "cfg", MountPath: "/etc/cfg"}})
	dir := t.TempDir()
	m, err := NewMirror(t.Context(), MirrorConfig{Client: fake.NewClientset(cm), Pod: pod, Container: "api", Dir: dir, Log: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	local := m.Mounted()[0].LocalPath
	ts := checkLayout(t, local, map[string]string{"a": "..data/a", "sub": "..data/sub"})
	if fi, err := os.Stat(filepath.Join(local, ts)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("got version dir mode %v (err %v), want 0755", fi.Mode().Perm(), err)
	}

	// A second mirror over the same directory (a restart) replaces the
	// version and drops the symlink of a path that is gone.
	pod.Spec.Volumes[0].ConfigMap.Items = pod.Spec.Volumes[0].ConfigMap.Items[:1]
	if _, err := NewMirror(t.Context(), MirrorConfig{Client: fake.NewClientset(cm), Pod: pod, Container: "api", Dir: dir, Log: testkit.Logger(t)}); err != nil {
		t.Fatal(err)
	}
	if ts2 := checkLayout(t, local, map[string]string{"a": "..data/a"}); ts2 == ts {
		t.Errorf("got the same version dir %s after a rewrite, want a new one", ts)
	}
}

func TestMirrorRun(t *testing.T) {
	yes := true
	ctx := t.Context()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "app"}, Data: map[string]string{"a": "1", "b": "2"}}
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec", Namespace: "app"}, Data: map[string][]byte{"token": []byte("t")}}
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "app"}, Data: map[string]string{"z": "z"}}
	pod := testPod([]corev1.Volume{
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec", Optional: &yes}}},
		{Name: "info", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
		}}}},
	}, []corev1.VolumeMount{{Name: "cfg", MountPath: "/cfg"}, {Name: "sec", MountPath: "/sec"}, {Name: "info", MountPath: "/info"}})
	client := fake.NewClientset(cm, sec, other, pod)
	dir := t.TempDir()
	m, err := NewMirror(ctx, MirrorConfig{Client: client, Pod: pod, Container: "api", Dir: dir, Log: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cfgDir, secDir, infoDir := filepath.Join(dir, "cfg"), filepath.Join(dir, "sec"), filepath.Join(dir, "info")
	oldTS, err := os.Readlink(filepath.Join(cfgDir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	established := make(chan objRef, 10)
	m.watching = func(r objRef) { established <- r }

	goroutines := runtime.NumGoroutine()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	waitWatches(t, established, objRef{kindConfigMap, "cfg"}, objRef{kindSecret, "sec"}, objRef{kindPod, "api-1"})

	// An unrelated ConfigMap changing touches nothing.
	other.Data["z"] = "zz"
	if _, err := client.CoreV1().ConfigMaps("app").Update(ctx, other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cm = cm.DeepCopy()
	cm.Data = map[string]string{"a": "changed", "c": "3"}
	if _, err := client.CoreV1().ConfigMaps("app").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if got, err := readVolume(cfgDir); err != nil || !cmp.Equal(got, map[string]string{"a": "0644 changed", "c": "0644 3"}) {
			return fmt.Errorf("got files %q (err %v)", got, err)
		}
		if _, err := os.Lstat(filepath.Join(cfgDir, oldTS)); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("old version dir %s still there (err %v)", oldTS, err)
		}
		if _, err := os.Lstat(filepath.Join(cfgDir, "b")); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("symlink b of a removed key still there (err %v)", err)
		}
		return nil
	})
	checkLayout(t, cfgDir, map[string]string{"a": "..data/a", "c": "..data/c"})

	pod = pod.DeepCopy()
	pod.Labels["tier"] = "db"
	if _, err := client.CoreV1().Pods("app").Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		got, err := readVolume(infoDir)
		if want := "0644 app=\"api\"\ntier=\"db\""; err != nil || got["labels"] != want {
			return fmt.Errorf("got labels file %q (err %v), want %q", got["labels"], err, want)
		}
		return nil
	})

	// An optional Secret deleted: an empty volume, as the kubelet does.
	if err := client.CoreV1().Secrets("app").Delete(ctx, "sec", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		if got, err := readVolume(secDir); err != nil || len(got) != 0 {
			return fmt.Errorf("got files %q (err %v), want none", got, err)
		}
		if _, err := os.Lstat(filepath.Join(secDir, "token")); !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("symlink token still there (err %v)", err)
		}
		return nil
	})
	// A non-optional ConfigMap deleted: the files stay.
	if err := client.CoreV1().ConfigMaps("app").Delete(ctx, "cfg", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("got Run error %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := volumeFiles(t, cfgDir); !cmp.Equal(got, map[string]string{"a": "0644 changed", "c": "0644 3"}) {
		t.Errorf("after deleting the ConfigMap got files %q, want the last ones", got)
	}
	testkit.WaitGoroutines(t, 10*time.Second, goroutines)
}

func TestMirrorRunRetriesWatch(t *testing.T) {
	ctx := t.Context()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "app"}, Data: map[string]string{"a": "1"}}
	pod := testPod([]corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}}, []corev1.VolumeMount{{Name: "cfg", MountPath: "/cfg"}})
	client := fake.NewClientset(cm)
	var lists, watches atomic.Int32
	client.PrependReactor("list", "configmaps", func(a k8stesting.Action) (bool, k8sruntime.Object, error) {
		if got, want := a.(k8stesting.ListAction).GetListRestrictions().Fields.String(), "metadata.name=cfg"; got != want {
			t.Errorf("got field selector %q, want %q", got, want)
		}
		lists.Add(1)
		return false, nil, nil
	})
	failed := watch.NewFake()
	client.PrependWatchReactor("configmaps", func(k8stesting.Action) (bool, watch.Interface, error) {
		switch watches.Add(1) {
		case 1:
			return true, nil, errors.New("connection refused")
		case 2:
			return true, failed, nil // fails with an Error event below
		}
		return false, nil, nil
	})
	dir := t.TempDir()
	m, err := NewMirror(ctx, MirrorConfig{Client: client, Pod: pod, Container: "api", Dir: dir, Log: testkit.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	m.backoffMin, m.backoffMax = time.Millisecond, 5*time.Millisecond
	established := make(chan objRef, 10)
	m.watching = func(r objRef) { established <- r }

	// A change made before Run is picked up by its first list.
	cm.Data["a"] = "2"
	if _, err := client.CoreV1().ConfigMaps("app").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- m.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	waitWatches(t, established, objRef{kindConfigMap, "cfg"}) // the fake one
	failed.Error(&metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonGone, Message: "too old"})
	waitWatches(t, established, objRef{kindConfigMap, "cfg"}) // the real one
	if got := lists.Load(); got < 3 {
		t.Errorf("got %d lists, want at least 3 (one per watch attempt)", got)
	}
	cm.Data["a"] = "3"
	if _, err := client.CoreV1().ConfigMaps("app").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() error {
		got, err := readVolume(filepath.Join(dir, "cfg"))
		if want := "0644 3"; err != nil || got["a"] != want {
			return fmt.Errorf("got a = %q (err %v), want %q", got["a"], err, want)
		}
		return nil
	})
}

func TestVolumePath(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "a", want: "a"},
		{in: "a/b/./c", want: "a/b/c"},
		{in: "..a", wantErr: true},
		{in: "a/..b", want: "a/..b"},
		{in: "a/../b", wantErr: true},
		{in: "..", wantErr: true},
		{in: "/a", wantErr: true},
		{in: "", wantErr: true},
		{in: ".", wantErr: true},
	}
	for _, tt := range tests {
		got, err := volumePath(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("volumePath(%q): got %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func testPod(vols []corev1.Volume, mounts []corev1.VolumeMount) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "app", UID: "u-1",
			Labels: map[string]string{"app": "api", "tier": "web"}, Annotations: map[string]string{"note": `a "quoted" value`}},
		Spec: corev1.PodSpec{Volumes: vols, Containers: []corev1.Container{{
			Name: "api", VolumeMounts: mounts,
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("100M")}},
		}}},
		Status: corev1.PodStatus{PodIP: "10.1.2.3"},
	}
}

// volumeFiles reads a mirrored volume the way a program would, through the
// user-visible symlinks: path → "mode content" for every file of the
// current version.
func volumeFiles(t *testing.T, local string) map[string]string {
	t.Helper()
	out, err := readVolume(local)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readVolume is volumeFiles for use while the mirror may be rewriting the
// volume, where a read can fail in the middle of a version switch.
func readVolume(local string) (map[string]string, error) {
	data, err := filepath.EvalSymlinks(filepath.Join(local, "..data"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	err = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(data, p)
		b, err := os.ReadFile(filepath.Join(local, rel))
		if err != nil {
			return err
		}
		fi, err := os.Stat(filepath.Join(local, rel))
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = fmt.Sprintf("%04o %s", fi.Mode().Perm(), b)
		return nil
	})
	return out, err
}

// checkLayout checks the kubelet layout of a volume directory: ..data links
// to the only version directory and the other entries are the given
// symlinks. It returns the version directory's name.
func checkLayout(t *testing.T, local string, wantLinks map[string]string) string {
	t.Helper()
	ts, err := os.Readlink(filepath.Join(local, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if !tsDirName.MatchString(ts) {
		t.Errorf("got ..data -> %q, want a ..YYYY_MM_DD_hh_mm_ss.nnnnnnnnn directory", ts)
	}
	ents, err := os.ReadDir(local)
	if err != nil {
		t.Fatal(err)
	}
	gotLinks := map[string]string{}
	for _, e := range ents {
		switch e.Name() {
		case "..data":
		case ts:
			if !e.IsDir() {
				t.Errorf("got %s of type %v, want a directory", ts, e.Type())
			}
		default:
			target, err := os.Readlink(filepath.Join(local, e.Name()))
			if err != nil {
				t.Errorf("got %s, want only ..data, %s and symlinks: %v", e.Name(), ts, err)
			}
			gotLinks[e.Name()] = target
		}
	}
	if diff := cmp.Diff(wantLinks, gotLinks); diff != "" {
		t.Errorf("symlinks in %s (-want +got):\n%s", local, diff)
	}
	return ts
}

// waitWatches waits until a watch on each of want has been established.
func waitWatches(t *testing.T, got <-chan objRef, want ...objRef) {
	t.Helper()
	pending := map[objRef]bool{}
	for _, r := range want {
		pending[r] = true
	}
	deadline := time.After(10 * time.Second)
	for len(pending) > 0 {
		select {
		case r := <-got:
			delete(pending, r)
		case <-deadline:
			t.Fatalf("watches not established: %v", pending)
		}
	}
}

func modePtr(m int32) *int32 { return &m }
