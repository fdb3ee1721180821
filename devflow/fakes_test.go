package devflow

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/bridgetun/bridgetun/cluster"
	"github.com/bridgetun/bridgetun/session"
)

// fakeSession holds intercepts in memory like a session does: Intercept
// adds one, Leave and endElsewhere remove it, Status lists them.
type fakeSession struct {
	status       session.Status
	interceptErr error
	leaveErr     error
	onLeave      func() // runs as Leave starts; nil: nothing
	onIntercept  func() // runs when Intercept succeeds, before it returns; nil: nothing
	slow         bool   // Intercept waits for its ctx to end, as a long rollout would

	mu        sync.Mutex
	statusErr error
	held      []session.InterceptInfo
	calls     []string
	specs     []session.InterceptSpec
}

var _ Session = (*fakeSession)(nil)

func (f *fakeSession) Status(context.Context) (session.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "status")
	st := f.status
	st.Intercepts = append([]session.InterceptInfo(nil), f.held...)
	return st, f.statusErr
}

func (f *fakeSession) Intercept(ctx context.Context, spec session.InterceptSpec, progress func(session.InterceptEvent)) (session.InterceptInfo, error) {
	if f.slow {
		f.mu.Lock()
		f.calls = append(f.calls, "intercept "+spec.Service)
		f.mu.Unlock()
		<-ctx.Done()
		return session.InterceptInfo{}, ctx.Err()
	}
	f.mu.Lock()
	f.calls = append(f.calls, "intercept "+spec.Service)
	f.specs = append(f.specs, spec)
	err := f.interceptErr
	f.mu.Unlock()
	if err != nil {
		return session.InterceptInfo{}, err
	}
	if f.onIntercept != nil {
		f.onIntercept()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if progress != nil {
		progress(session.InterceptEvent{Done: true, Text: "patched deployment/" + spec.Service})
		progress(session.InterceptEvent{Text: "1 of 2 replicas ready"})
		progress(session.InterceptEvent{Done: true, Text: "every pod of deployment/" + spec.Service + " runs the sidecar"})
	}
	info := session.InterceptInfo{
		Service: spec.Service, Namespace: "ns", Workload: "Deployment/" + spec.Service, Container: "app",
		ContainerPort: 8080, LocalPort: spec.LocalPort, RouteAs: spec.RouteAs, Holder: spec.Holder,
	}
	if spec.RouteAs != "" {
		info.LocalURL = "http://127.0.0.1:41000"
	}
	f.held = append(f.held, info)
	return info, nil
}

func (f *fakeSession) Leave(_ context.Context, service string) (string, error) {
	if f.onLeave != nil {
		f.onLeave()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "leave "+service)
	if f.leaveErr != nil {
		return "", f.leaveErr
	}
	f.drop(service)
	return "restored Deployment/" + service, nil
}

// lose marks the intercept lost, as the session does once the grace
// period ran out.
func (f *fakeSession) lose(service, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.held {
		if f.held[i].Service == service {
			f.held[i].State, f.held[i].StateReason = session.InterceptLost, reason
		}
	}
}

// setState sets the held intercept's state, as the session's status shows it.
func (f *fakeSession) setState(service, state, reason string, since time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.held {
		if f.held[i].Service == service {
			f.held[i].State, f.held[i].StateReason, f.held[i].StateSince = state, reason, since
		}
	}
}

// endElsewhere ends the intercept as `bridgetun leave` from another
// terminal would.
func (f *fakeSession) endElsewhere(service string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drop(service)
}

// goDown makes Status fail as it does once the session has ended.
func (f *fakeSession) goDown() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held, f.statusErr = nil, session.ErrNotRunning
}

func (f *fakeSession) drop(service string) {
	var keep []session.InterceptInfo
	for _, it := range f.held {
		if it.Service != service {
			keep = append(keep, it)
		}
	}
	f.held = keep
}

func (f *fakeSession) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// fakeCluster is a Cluster over a fake clientset holding objs; it records
// the options Connect was given and the copies made.
type fakeCluster struct {
	objs   []runtime.Object
	denied bool // access reviews say no

	mu     sync.Mutex
	opts   []cluster.Options
	copies []string // "container:src → dst"
}

func (c *fakeCluster) Cluster(o cluster.Options) Cluster {
	return Cluster{
		Options: o,
		Connect: func(_ context.Context, o cluster.Options) (*cluster.Conn, error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.opts = append(c.opts, o)
			cs := fake.NewClientset(c.objs...)
			cs.PrependReactor("create", "selfsubjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, &authorizationv1.SelfSubjectAccessReview{Status: authorizationv1.SubjectAccessReviewStatus{Allowed: !c.denied}}, nil
			})
			return &cluster.Conn{Client: cs, Namespace: o.Namespace, Context: o.Context}, nil
		},
		CopyFromPod: func(_ context.Context, _ *rest.Config, _ kubernetes.Interface, pod *corev1.Pod, container, src, dst string) error {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.copies = append(c.copies, container+":"+src+" → "+dst)
			return nil
		},
	}
}

// apiObjects is Service api in namespace ns with one running pod of
// ReplicaSet api-7: container app (A, B from $(A), a ConfigMap volume at
// /etc/api; it serves the Service's port) and container sidecar (A=2);
// service links are off so the environment is just theirs.
func apiObjects() []runtime.Object {
	off, yes := false, true
	labels := map[string]string{"app": "api"}
	objs := []runtime.Object{
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "ns"},
			Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		},
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "api-7d9", Namespace: "ns", Labels: labels},
			Spec: corev1.PodSpec{
				EnableServiceLinks: &off,
				Containers: []corev1.Container{
					{
						Name:         "app",
						Env:          []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "$(A)-x"}},
						VolumeMounts: []corev1.VolumeMount{{Name: "settings", MountPath: "/etc/api"}, {Name: "scratch", MountPath: "/tmp/scratch"}},
					},
					{Name: "sidecar", Env: []corev1.EnvVar{{Name: "A", Value: "2"}}},
				},
				Volumes: []corev1.Volume{
					{Name: "settings", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "api-settings"},
					}}},
					{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				},
			},
			Status: corev1.PodStatus{Phase: corev1.PodRunning},
		},
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "api-settings", Namespace: "ns"},
			Data:       map[string]string{"level": "info"},
		},
	}
	pod := objs[1].(*corev1.Pod)
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "api-7", UID: "rs-api", Controller: &yes}}
	one := int32(1)
	return append(objs, &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "api-7", Namespace: "ns", UID: "rs-api", Labels: labels},
		Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: pod.Spec}},
	})
}

// syncBuffer is a locked buffer that says when a text has been written.
type syncBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	await string
	seen  chan struct{} // closed once await has been written
}

func newSyncBuffer(await string) *syncBuffer {
	return &syncBuffer{await: await, seen: make(chan struct{})}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	if s.await != "" && strings.Contains(s.b.String(), s.await) {
		close(s.seen)
		s.await = ""
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// exitCode is the code of an *ExitError in err, 0 for nil, and fails the
// test for any other error.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.Code
	}
	t.Fatalf("got error %v, want an exit code", err)
	return 0
}
