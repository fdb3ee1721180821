package sidecar

import (
	"bytes"
	"net"
	"net/http"
	"time"
)

// Sniffing: in isolated mode a connection is served as HTTP only if it
// starts with an HTTP/1.x request line or the HTTP/2 prior-knowledge
// preface; anything else (TLS, a database protocol, a silent client) is
// relayed raw to the original.

const (
	h2Preface    = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	maxMethodLen = 32       // longer than any registered method
	maxSniffLen  = 16 << 10 // a request line longer than this is passed through raw
)

type verdict int

const (
	undecided verdict = iota
	isHTTP
	notHTTP
)

// sniff reads from c until the first bytes decide, the timeout passes, or
// the read fails. It returns the bytes read, which the caller replays.
func sniff(c net.Conn, timeout time.Duration) (head []byte, ok bool) {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)] // grow
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch classify(buf) {
		case isHTTP:
			return buf, true
		case notHTTP:
			return buf, false
		}
		if err != nil { // timeout (a client waiting for the server), EOF, reset
			return buf, false
		}
	}
}

// classify decides from the first bytes of a connection.
func classify(b []byte) verdict {
	if len(b) == 0 {
		return undecided
	}
	// The preface's first line decides; the HTTP/2 server checks the rest.
	// (Matching the whole preface made the verdict depend on how the bytes
	// were split into reads: "PRI * HTTP/2.0\r\n" alone was HTTP, the same
	// line followed by a bad byte in one read was not. FuzzSniff.)
	const h2Line = "PRI * HTTP/2.0\r\n"
	if n := min(len(b), len(h2Line)); string(b[:n]) == h2Line[:n] {
		if n == len(h2Line) {
			return isHTTP
		}
		return undecided
	}
	// HTTP/1.x: method SP request-target SP HTTP/1.x CRLF
	i := 0
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	switch {
	case i > maxMethodLen:
		return notHTTP
	case i == len(b):
		return undecided
	case i == 0 || b[i] != ' ':
		return notHTTP
	}
	end := bytes.IndexByte(b, '\n')
	line := b[i+1:]
	if end >= 0 {
		line = b[i+1 : end]
	}
	// No control bytes in the request line, whether or not its end has
	// arrived: the verdict must not depend on where the reads split.
	for _, c := range line {
		if c < ' ' && c != '\r' || c == 0x7f {
			return notHTTP
		}
	}
	if end < 0 || end >= maxSniffLen {
		if len(b) >= maxSniffLen {
			return notHTTP
		}
		return undecided
	}
	rest := bytes.TrimSuffix(line, []byte("\r"))
	sp := bytes.LastIndexByte(rest, ' ')
	if sp <= 0 || bytes.ContainsAny(rest[:sp], " \t\r") {
		return notHTTP
	}
	if major, _, ok := http.ParseHTTPVersion(string(rest[sp+1:])); !ok || major != 1 {
		return notHTTP
	}
	return isHTTP
}

// isTokenChar reports whether c may appear in an HTTP method (RFC 9110 tchar).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c < 0x80 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}
