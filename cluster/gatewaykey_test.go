package cluster

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestGatewayPrivateKey: only a missing Secret (or key) makes a new key;
// every other read error is returned and generate is never called (the
// old `err == nil && key != ""` check rotated the key on a timeout).
func TestGatewayPrivateKey(t *testing.T) {
	secret := func(data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: GatewayName, Namespace: "bt"}, Data: data}
	}
	for _, tc := range []struct {
		name        string
		objs        []runtime.Object
		getErr      error
		wantKey     string
		wantCreated bool
		wantErr     string
	}{
		{name: "existing", objs: []runtime.Object{secret(map[string][]byte{SecretKeyPrivate: []byte("old-key")})}, wantKey: "old-key"},
		{name: "no secret", wantKey: "new-key", wantCreated: true},
		{name: "secret without key", objs: []runtime.Object{secret(map[string][]byte{"sidecar-token": []byte("t")})}, wantKey: "new-key", wantCreated: true},
		{name: "timeout", objs: []runtime.Object{secret(map[string][]byte{SecretKeyPrivate: []byte("old-key")})},
			getErr: apierrors.NewTimeoutError("etcd busy", 1), wantErr: "the gateway key is kept"},
		{name: "forbidden", getErr: apierrors.NewForbidden(corev1.Resource("secrets"), GatewayName, errors.New("no")), wantErr: "forbidden"},
		{name: "server error", getErr: apierrors.NewInternalError(errors.New("boom")), wantErr: "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(tc.objs...)
			if tc.getErr != nil {
				cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, tc.getErr })
			}
			generated := 0
			key, created, err := GatewayPrivateKey(t.Context(), cs, "bt", func() (string, error) { generated++; return "new-key", nil })
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", key, err, tc.wantErr)
				}
				if generated != 0 {
					t.Errorf("generate called %d times after a read error, want 0", generated)
				}
				return
			}
			if err != nil || key != tc.wantKey || created != tc.wantCreated {
				t.Errorf("got %q, created %v, %v; want %q, created %v", key, created, err, tc.wantKey, tc.wantCreated)
			}
		})
	}
}
