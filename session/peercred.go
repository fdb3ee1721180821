package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
)

// peerListener checks each connection's peer (SO_PEERCRED): only the
// session's owner and root may use the socket. The socket's mode already
// keeps others out; this holds even if a mode or directory is loosened.
// A refused connection is still handed to the server, marked, so that
// peerCheck answers its request with the one-line reason (403) instead of
// a bare hang-up.
type peerListener struct {
	net.Listener
	owner     int    // uid allowed besides root
	ownerName string // for the refusal
}

// refusedConn is a connection from a peer the session does not serve.
type refusedConn struct {
	net.Conn
	why string
}

// Accept returns the next connection, marked when its peer is refused.
func (l *peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	switch uid, err := peerUID(c); {
	case errors.Is(err, errors.ErrUnsupported), err == nil && (uid == 0 || uid == l.owner):
		return c, nil
	case err != nil:
		return &refusedConn{Conn: c, why: fmt.Sprintf("refused: cannot tell who is calling (%v)", err)}, nil
	default:
		return &refusedConn{Conn: c, why: (&ForeignSessionError{UID: l.owner, User: l.ownerName}).Error()}, nil
	}
}

type refusedKey struct{}

// peerContext is the http.Server's ConnContext: it carries a refusal to
// the handler.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	if r, ok := c.(*refusedConn); ok {
		return context.WithValue(ctx, refusedKey{}, r.why)
	}
	return ctx
}

// peerCheck answers 403 with the reason to a refused peer and closes its
// connection; everyone else reaches next.
func peerCheck(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if why, ok := r.Context().Value(refusedKey{}).(string); ok {
			w.Header().Set("Connection", "close")
			http.Error(w, why, http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
