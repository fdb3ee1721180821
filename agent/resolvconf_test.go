package agent

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadClusterDNS(t *testing.T) {
	for _, tc := range []struct{ name, text, server, domain string }{
		{"kubelet", "search bt.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n", "10.96.0.10", "cluster.local"},
		{"custom domain", "nameserver 10.0.0.10\nnameserver 10.0.0.11\nsearch ns1.svc.corp.example svc.corp.example corp.example\n", "10.0.0.10", "corp.example"},
		{"no search", "nameserver 1.2.3.4\n", "1.2.3.4", ""},
		{"empty", "", "", ""},
	} {
		p := filepath.Join(t.TempDir(), "resolv.conf")
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		s, d := ReadClusterDNS(p)
		if s != tc.server || d != tc.domain {
			t.Errorf("%s: got (%q, %q), want (%q, %q)", tc.name, s, d, tc.server, tc.domain)
		}
	}
}
