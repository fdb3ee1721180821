package dnsproxy

import "testing"

func TestRoute(t *testing.T) {
	cfg := Config{
		ClusterDomain: "cluster.local",
		Namespace:     "bt",
		Namespaces:    NewStaticServices("bt", "other"),
		Services:      NewStaticServices("frontend", "db"),
	}
	tests := []struct {
		name, route, rewritten string
	}{
		{"frontend", RouteCluster, "frontend.bt.svc.cluster.local."},
		{"Frontend.", RouteCluster, "frontend.bt.svc.cluster.local."},
		{"unknown", RouteUpstream, "unknown."},
		{"frontend.bt", RouteCluster, "frontend.bt.svc.cluster.local."},
		{"api.other", RouteCluster, "api.other.svc.cluster.local."},
		{"example.com", RouteUpstream, "example.com."},
		{"frontend.bt.svc", RouteCluster, "frontend.bt.svc.cluster.local."},
		{"x.nowhere.svc.", RouteCluster, "x.nowhere.svc.cluster.local."},
		{"10-244-1-7.bt.pod", RouteCluster, "10-244-1-7.bt.pod.cluster.local."},
		{"www.example.pod", RouteUpstream, "www.example.pod."},
		{"10-244-1-999.bt.pod", RouteUpstream, "10-244-1-999.bt.pod."},
		{"frontend.bt.svc.cluster.local.", RouteCluster, "frontend.bt.svc.cluster.local."},
		{"cluster.local", RouteCluster, "cluster.local."},
		{"notcluster.local", RouteUpstream, "notcluster.local."},
		{"www.example.com.", RouteUpstream, "www.example.com."},
		{".", RouteUpstream, "."},
		{"", RouteUpstream, "."},
	}
	for _, tt := range tests {
		route, rewritten := Route(tt.name, cfg)
		if route != tt.route || rewritten != tt.rewritten {
			t.Errorf("Route(%q) = %q, %q; want %q, %q", tt.name, route, rewritten, tt.route, tt.rewritten)
		}
	}
}

func TestRouteDefaults(t *testing.T) {
	// No namespace, no services: only the cluster domain and .svc/.pod forms.
	for name, want := range map[string]string{"frontend": RouteUpstream, "a.b.svc": RouteCluster, "a.svc.cluster.local": RouteCluster, "frontend.bt": RouteUpstream} {
		if got, _ := Route(name, Config{}); got != want {
			t.Errorf("Route(%q, Config{}) = %q, want %q", name, got, want)
		}
	}
}

func TestServicesSet(t *testing.T) {
	s := &Services{}
	if s.Has("a") {
		t.Fatal("zero Services has a")
	}
	s.Set([]string{"A.", "b"})
	if !s.Has("a") || !s.Has("b") || s.Has("c") {
		t.Errorf("got %v, want [a b]", s.Names())
	}
}
