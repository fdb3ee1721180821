package agent

import (
	"context"
	"sync"
	"time"
)

// SidecarPod is the pod a sidecar's token was issued for, as the API
// server vouched for it (TokenReview).
type SidecarPod struct {
	Namespace, Name, UID string
	ServiceAccount       string // the token's ServiceAccount, in Namespace
}

// SidecarPods answers for the relay whether a sidecar's pod belongs to an
// intercepted Service. cmd/bridgetun-agent implements it with client-go,
// so the agent package stays Kubernetes-free.
type SidecarPods interface {
	// Backs reports whether pod exists (same UID and ServiceAccount),
	// runs bridgetun's sidecar and is selected by Service svc of its
	// namespace.
	Backs(ctx context.Context, pod SidecarPod, svc string) (bool, error)
}

// podCacheTTL is how long a pod's "yes" is kept: a route poll every ~25 s
// and a CONNECT per connection must not each cost an API call.
const podCacheTTL = 30 * time.Second

// podCache keeps SidecarPods' positive answers briefly. A "no" or an
// error is never kept: a pod may just have been created, and the API
// server may be back.
type podCache struct {
	pods SidecarPods // nil answers no
	ttl  time.Duration
	now  func() time.Time

	mu  sync.Mutex
	yes map[podService]time.Time // until when
}

type podService struct {
	pod SidecarPod
	svc string
}

func newPodCache(pods SidecarPods, ttl time.Duration) *podCache {
	return &podCache{pods: pods, ttl: ttl, now: time.Now, yes: map[podService]time.Time{}}
}

func (c *podCache) backs(ctx context.Context, pod SidecarPod, svc string) (bool, error) {
	if c.pods == nil {
		return false, nil
	}
	k := podService{pod, svc}
	c.mu.Lock()
	until, ok := c.yes[k]
	c.mu.Unlock()
	if ok && c.now().Before(until) {
		return true, nil
	}
	yes, err := c.pods.Backs(ctx, pod, svc)
	if err != nil || !yes {
		c.mu.Lock()
		delete(c.yes, k)
		c.mu.Unlock()
		return false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.yes) >= 4096 { // bounded: drop everything rather than grow
		c.yes = map[podService]time.Time{}
	}
	c.yes[k] = c.now().Add(c.ttl)
	return true, nil
}
