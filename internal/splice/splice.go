// Package splice copies between two connections both ways — the one relay
// loop the workstation, the gateway, the proxies and the sidecar share, so
// all of them end a connection the same way.
package splice

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
)

// DefaultBufSize is the copy buffer of one direction of Relay: twice
// io.Copy's 32 KiB, so a stream costs half the read and write calls.
const DefaultBufSize = 64 << 10

// Stats counts the bytes a relay copied each way.
type Stats struct {
	AToB int64 // read from a, written to b
	BToA int64 // read from b, written to a
}

// Relayer relays with copy buffers of one size, pooled between relays. The
// zero value is not usable; use NewRelayer.
type Relayer struct {
	size int
	pool sync.Pool // *[]byte of size bytes
}

// NewRelayer returns a Relayer whose copies go through bufSize-byte buffers
// (0 = DefaultBufSize). A data path that reads more than 64 KiB at a time
// (gVisor with GRO, say) wants a larger one.
func NewRelayer(bufSize int) *Relayer {
	if bufSize <= 0 {
		bufSize = DefaultBufSize
	}
	r := &Relayer{size: bufSize}
	r.pool.New = func() any { b := make([]byte, r.size); return &b }
	return r
}

var defaultRelayer = NewRelayer(DefaultBufSize)

// Relay copies a→b and b→a with DefaultBufSize buffers; see Relayer.Relay.
func Relay(ctx context.Context, a, b net.Conn) (Stats, error) {
	return defaultRelayer.Relay(ctx, a, b)
}

// Relay copies a→b and b→a until both directions end, then closes a and b
// and returns what it copied.
//
//   - An EOF from one side half-closes the other (CloseWrite), and the other
//     direction keeps going: a client's shutdown(SHUT_WR) reaches the server,
//     which may still answer. A side that cannot half-close (no CloseWrite)
//     ends the relay cleanly: both are closed, nil is returned.
//   - An error in either direction (a reset, a failed write, a failed
//     half-close) closes both connections at once, so the other direction's
//     blocked Read returns instead of hanging; Relay returns that error.
//   - ctx ending closes both the same way; Relay returns ctx.Err().
//
// Only the first cause counts: errors that follow from Relay's own closing
// are not reported. Relay returns after both copy goroutines have exited.
//
// Between kernel stream sockets on Linux (*net.TCPConn and *net.TCPConn, or
// a *net.TCPConn and a *net.UnixConn), each direction uses io.Copy, whose
// ReadFrom/WriteTo fast path moves the bytes with splice(2) without copying
// them through user space; Stats still counts them. Any other pair (a gVisor
// conn, net.Pipe, a BufferedConn) copies through a pooled buffer, with the
// ends' own ReadFrom/WriteTo hidden: *net.TCPConn's fallback would allocate
// a 32 KiB buffer of its own for every copy.
func (r *Relayer) Relay(ctx context.Context, a, b net.Conn) (Stats, error) {
	e := &ending{a: a, b: b}
	afterDone := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(afterDone)
		e.end(ctx.Err())
	})
	var st Stats
	var wg sync.WaitGroup
	wg.Go(func() { st.AToB = r.half(e, b, a, "a to b") })
	st.BToA = r.half(e, a, b, "b to a")
	wg.Wait()
	if !stop() {
		<-afterDone // ctx ended meanwhile: its callback may still be closing
	}
	e.end(nil) // both directions ended cleanly, unless a cause came first
	return st, e.cause()
}

// half copies src to dst, then passes src's EOF on to dst, or ends the relay
// on an error.
func (r *Relayer) half(e *ending, dst, src net.Conn, dir string) int64 {
	n, err := r.copy(dst, src)
	switch {
	case err != nil:
		e.end(fmt.Errorf("relay %s: %w", dir, err))
	case !canCloseWrite(dst):
		e.end(nil)
	default:
		if err := dst.(closeWriter).CloseWrite(); err != nil {
			e.end(fmt.Errorf("relay %s: half-close: %w", dir, err))
		}
	}
	return n
}

// copy is io.Copy through the kernel's fast path where one applies, else
// through pooled buffers (copyAdaptive).
func (r *Relayer) copy(dst, src net.Conn) (int64, error) {
	if d, s := unwrap(dst), unwrap(src); kernelPath(d, s) {
		return io.Copy(d, s)
	}
	return r.copyAdaptive(dst, src)
}

// smallBufSize is what a direction reads with while its reads come back
// small (a quiet or interactive flow): a direction holds one of the
// Relayer's large buffers only while its reads are large (bulk), so
// thousands of quiet flows on a gateway do not each pin one while they
// wait in Read (2,000 flows × 2 directions × 256 KiB held 630 MiB of a
// gateway's RSS in bench-scale).
const smallBufSize = 4 << 10

var smallPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}

// copyAdaptive copies src to dst until EOF (nil) or an error. It reads
// into a small buffer; a read that fills it moves the direction to a large
// pooled one, and a read that would have fit the small one gives the large
// one back before the next (blocking) read.
func (r *Relayer) copyAdaptive(dst io.Writer, src io.Reader) (written int64, err error) {
	sp := smallPool.Get().(*[]byte)
	defer smallPool.Put(sp)
	var big *[]byte
	defer func() {
		if big != nil {
			r.pool.Put(big)
		}
	}()
	for {
		buf := *sp
		if big != nil {
			buf = *big
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr != nil {
				return written, werr
			}
			if w != n {
				return written, io.ErrShortWrite
			}
		}
		switch {
		case big == nil && n == len(buf) && r.size > smallBufSize:
			big = r.pool.Get().(*[]byte)
		case big != nil && n <= smallBufSize:
			r.pool.Put(big)
			big = nil
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// kernelPath reports whether io.Copy(dst, src) reaches splice(2): as of Go
// 1.22, *net.TCPConn.ReadFrom splices from a TCP or stream Unix socket, and
// *net.TCPConn.WriteTo splices into a stream Unix socket (net/splice_linux.go).
// Elsewhere their fallback is a plain 32 KiB copy, worse than the pool's. (A
// datagram Unix socket also takes that fallback; nothing relays one.)
func kernelPath(dst, src net.Conn) bool {
	return runtime.GOOS == "linux" && kernelPair(dst, src)
}

// kernelPair reports whether dst and src are the socket types splice(2)
// joins: TCP to TCP, TCP to Unix, Unix to TCP.
func kernelPair(dst, src net.Conn) bool {
	_, dstTCP := dst.(*net.TCPConn)
	_, srcTCP := src.(*net.TCPConn)
	_, dstUnix := dst.(*net.UnixConn)
	_, srcUnix := src.(*net.UnixConn)
	return dstTCP && (srcTCP || srcUnix) || dstUnix && srcTCP
}

// unwrap returns the socket under wrappers that only watch a connection
// and pass its bytes unchanged (internal/netlimit's cap says so with
// WatchedConn; tls.Conn's NetConn is no such promise), so their sockets
// keep the kernel's fast path. Closes and half-closes still go through
// the wrapper.
func unwrap(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ WatchedConn() net.Conn })
		if !ok {
			return c
		}
		c = u.WatchedConn()
	}
}

// ending closes both connections once, on the first cause of the relay's
// end, and remembers that cause.
type ending struct {
	a, b net.Conn

	mu   sync.Mutex
	done bool
	err  error
}

// end records err as the cause unless one was recorded, and closes both.
// end(nil) is a clean end.
func (e *ending) end(err error) {
	e.mu.Lock()
	if e.done {
		e.mu.Unlock()
		return
	}
	e.done, e.err = true, err
	e.mu.Unlock()
	_ = e.a.Close()
	_ = e.b.Close()
}

func (e *ending) cause() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

// closeWriter is a connection that can half-close (*net.TCPConn, gVisor's
// gonet.TCPConn, BufferedConn).
type closeWriter interface{ CloseWrite() error }

// canCloseWrite reports whether c can half-close; a BufferedConn can when
// its Conn can (its CloseWrite falls back to Close, which would end the
// other direction with an error instead of cleanly).
func canCloseWrite(c net.Conn) bool {
	if bc, ok := c.(*BufferedConn); ok {
		return canCloseWrite(bc.Conn)
	}
	_, ok := c.(closeWriter)
	return ok
}

// BufferedConn is a net.Conn whose first reads come from R (bytes a reader
// buffered past a protocol header), then from the Conn itself.
type BufferedConn struct {
	net.Conn
	R io.Reader
}

func (c *BufferedConn) Read(p []byte) (int, error) { return c.R.Read(p) }

// CloseWrite half-closes the underlying connection when it can.
func (c *BufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
