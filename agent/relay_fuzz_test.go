package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/internal/testkit"
)

// FuzzRelay sends arbitrary HTTP requests to the relay (route polls and
// CONNECT). The fake API server of relay_test.go: "tok" is the relay token
// of pod ns/api-1, which backs Services api and other; ns/api and
// ns/billing are intercepted (targets 198.19.0.10:8080 and
// 198.19.0.11:9090). The relay's dial records its target and fails, so no
// request gets past it. Invariants: nothing is dialled without the token,
// and with it only api's target, exactly as the request named it; a route
// table is answered only for a Service the pod backs, holds only that
// Service's routes and decodes; no answer is a server error but a failed
// dial's 502.
func FuzzRelay(f *testing.F) {
	const apiTarget, billingTarget = "198.19.0.10:8080", "198.19.0.11:9090"
	tab := NewIntercepts(0, nil)
	if _, err := tab.Add(req(keyA, ""), ipA); err != nil {
		f.Fatal(err)
	}
	billing := req(keyB, "")
	billing.Service, billing.Workload.Name, billing.Port = "billing", "billing", 9090
	if _, err := tab.Add(billing, ipB); err != nil {
		f.Fatal(err)
	}
	var (
		mu     sync.Mutex
		dialed []string
	)
	relay := NewRelay(RelayConfig{
		Intercepts: tab, Auth: testSidecarAuth, Pods: testSidecarPods, PollTimeout: time.Millisecond,
		Dial: func(_ context.Context, _, address string) (net.Conn, error) {
			mu.Lock()
			defer mu.Unlock()
			dialed = append(dialed, address)
			return nil, errors.New("fuzz: no workstation here")
		},
	})
	connect := func(target, token string) []byte {
		s := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
		if token != "" {
			s += "Authorization: Bearer " + token + "\r\n"
		}
		return []byte(s + "\r\n")
	}
	routes := func(query, token string) []byte {
		s := "GET /v1/routes?" + query + " HTTP/1.1\r\nHost: gateway\r\n"
		if token != "" {
			s += "Authorization: Bearer " + token + "\r\n"
		}
		return []byte(s + "\r\n")
	}
	testkit.Seeds(f,
		connect(apiTarget, "tok"),
		connect(billingTarget, "tok"),
		connect(apiTarget, ""),
		connect(apiTarget, "forged"),
		connect("198.19.0.10:22", "tok"),
		connect("[::ffff:198.19.0.10]:8080", "tok"),
		connect("198.19.0.10", "tok"),
		routes("namespace=ns&service=api&after=0", "tok"),
		routes("namespace=ns&service=other&after=3", "tok"),
		routes("namespace=ns&service=billing&after=0", "tok"),
		routes("namespace=other&service=api", "tok"),
		routes("namespace=ns&service=api&after=-1", "tok"),
		routes("namespace=ns&service=api&namespace=other", "tok"),
		routes("namespace=ns&service=api", ""),
		[]byte("POST /v1/routes HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer tok\r\n\r\n"),
		[]byte("GET /v1/routes HTTP/1.1\r\nHost: gateway\r\nAuthorization: bearer tok\r\n\r\n"),
		[]byte("CONNECT /x HTTP/1.1\r\nHost: "+apiTarget+"\r\nAuthorization: Bearer tok\r\n\r\n"),
	)
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return // net/http's own parser refuses it before the handler
		}
		r.RemoteAddr = "10.244.1.7:40000"
		mu.Lock()
		before := len(dialed)
		mu.Unlock()
		rec := httptest.NewRecorder()
		relay.ServeHTTP(rec, r)
		mu.Lock()
		newDials := append([]string(nil), dialed[before:]...)
		mu.Unlock()

		token := r.Header.Get("Authorization")
		if len(newDials) > 0 {
			if token != "Bearer tok" || r.Method != http.MethodConnect {
				t.Fatalf("dialled %v for %s %s with Authorization %q", newDials, r.Method, r.Host, token)
			}
			if len(newDials) != 1 || newDials[0] != apiTarget || r.Host != apiTarget {
				t.Fatalf("dialled %v for CONNECT %q; the pod may reach %s only", newDials, r.Host, apiTarget)
			}
		}
		if rec.Code >= 500 && !(rec.Code == http.StatusBadGateway && len(newDials) == 1) {
			t.Fatalf("%s %s: server error %d %q", r.Method, r.URL, rec.Code, rec.Body)
		}
		if rec.Code == http.StatusOK {
			if r.Method != http.MethodGet || token != "Bearer tok" {
				t.Fatalf("%s %s with Authorization %q: got 200", r.Method, r.URL, token)
			}
			q := r.URL.Query()
			if q.Get("namespace") != "ns" || (q.Get("service") != "api" && q.Get("service") != "other") {
				t.Fatalf("route table answered for %s/%s, which pod ns/api-1 does not back", q.Get("namespace"), q.Get("service"))
			}
			var tab api.RouteTable
			if err := json.Unmarshal(rec.Body.Bytes(), &tab); err != nil {
				t.Fatalf("route table %q: %v", rec.Body, err)
			}
			for _, rt := range tab.Routes {
				if q.Get("service") != "api" || rt.Target != apiTarget {
					t.Fatalf("routes of %s include %+v", q.Get("service"), rt)
				}
			}
		}
	})
}
