package proxy

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"net/http"
	"testing"

	"github.com/bridgetun/bridgetun/internal/testkit"
)

// FuzzHTTPProxy drives a real HTTP proxy listener with arbitrary bytes.
// The first byte picks the server: even = open, odd = credentials
// (alice/s3cret). Invariants: the server finishes within the deadline once
// the client half-closes; its first answer is a well-formed HTTP/1.1
// response; a 407 carries Proxy-Authenticate; with credentials on, it
// dials nothing unless the input carried them.
func FuzzHTTPProxy(f *testing.F) {
	good := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(fuzzUser+":"+fuzzPass)) + "\r\n"
	bad := "Proxy-Authorization: Basic " + base64.StdEncoding.EncodeToString([]byte(fuzzUser+":nope")) + "\r\n"
	seed := func(auth byte, s string) []byte { return append([]byte{auth}, s...) }
	testkit.Seeds(f,
		seed(0, "CONNECT 10.96.0.21:7 HTTP/1.1\r\nHost: 10.96.0.21:7\r\n\r\nping"),
		seed(0, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n"),
		seed(0, "CONNECT [fd00::21]:7 HTTP/1.1\r\nHost: [fd00::21]:7\r\n\r\n"),
		seed(0, "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"),
		seed(0, "CONNECT echo HTTP/1.1\r\nHost: echo\r\n\r\n"),
		seed(0, "CONNECT echo:99999 HTTP/1.1\r\nHost: echo:99999\r\n\r\n"),
		seed(0, "GET http://10.96.0.20/healthz HTTP/1.1\r\nHost: 10.96.0.20\r\n\r\nGET http://api.shop.svc:80/x HTTP/1.1\r\nHost: api.shop.svc\r\n\r\n"),
		seed(0, "POST http://api.shop.svc/orders HTTP/1.1\r\nHost: api.shop.svc\r\nContent-Length: 4\r\n\r\nbody"),
		seed(0, "HEAD http://api.shop.svc/ HTTP/1.0\r\n\r\n"),
		seed(0, "GET /not-absolute HTTP/1.1\r\nHost: x\r\n\r\n"),
		seed(0, "GET https://api.shop.svc/ HTTP/1.1\r\nHost: api.shop.svc\r\n\r\n"),
		seed(0, "GET http://nope.example/ HTTP/1.1\r\nHost: nope.example\r\n\r\n"),
		seed(1, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n"+good+"\r\nping"),
		seed(1, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n"+bad+"\r\n"),
		seed(1, "CONNECT echo:7 HTTP/1.1\r\nHost: echo:7\r\n\r\n"),
		seed(1, "GET http://api.shop.svc/ HTTP/1.1\r\nHost: api.shop.svc\r\nProxy-Authorization: Bearer x\r\n\r\n"),
		seed(1, "GET http://api.shop.svc/ HTTP/1.1\r\nHost: api.shop.svc\r\nProxy-Authorization: Basic !!!\r\n\r\n"),
		seed(1, "GET http://api.shop.svc/ HTTP/1.1\r\nHost: api.shop.svc\r\n"+good+"\r\n"),
		seed(0, "GET http://x/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
		seed(0, "GET http://x/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
		seed(0, "CONNECT\r\n\r\n"),
		seed(0, "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"), // a TLS ClientHello
	)
	servers := [2]*fuzzProxy{newFuzzProxy(f, false), newFuzzProxy(f, true)}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		p := servers[data[0]&1]
		in := data[1:]
		before := p.dials.Load()
		out := exchange(t, p.http, in)
		dialled := p.dials.Load() > before
		if p.srv.authRequired() && dialled && !bytes.Contains(in, []byte(good[len("Proxy-Authorization: Basic "):len(good)-2])) {
			t.Fatalf("server with credentials dialled for input %q without them", in)
		}
		if len(out) == 0 {
			return // e.g. a connection closed before a whole request line
		}
		method := "GET"
		if i := bytes.IndexByte(in, ' '); i > 0 {
			method = string(in[:i])
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("answer to %q is not an HTTP response: %v (%q)", in, err, out)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusProxyAuthRequired && resp.Header.Get("Proxy-Authenticate") == "" {
			t.Fatalf("407 without Proxy-Authenticate for %q", in)
		}
		if resp.StatusCode == http.StatusProxyAuthRequired && !p.srv.authRequired() {
			t.Fatalf("open proxy answered 407 for %q", in)
		}
	})
}
