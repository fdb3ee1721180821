package tunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/ipc"
)

// UAPIDir is where wireguard-tools look for a userspace device's control
// socket (`wg show NAME` finds NAME.sock there).
const UAPIDir = "/var/run/wireguard"

// uapiListen is ipc.UAPIListen, a variable so a test can count Closes.
var uapiListen = func(name string, f *os.File) (net.Listener, error) { return ipc.UAPIListen(name, f) }

// ServeUAPI serves the device's WireGuard control socket, UAPIDir/NAME.sock
// (root only: created with umask 077), so `wg show NAME` prints the peer,
// endpoint, latest handshake and transfer as for any WireGuard interface.
// A stale socket of a crashed session is replaced. It returns once ctx
// ended and every connection it served has closed; the socket is removed.
func (d *Device) ServeUAPI(ctx context.Context, name string) error {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return fmt.Errorf("wireguard control socket %s: %w", filepath.Join(UAPIDir, name+".sock"), err)
	}
	ln, err := uapiListen(name, f)
	if err != nil {
		f.Close()
		return fmt.Errorf("wireguard control socket for %s: %w", name, err)
	}
	// wireguard-go's listener closes its inotify descriptor by number on
	// every Close: a second Close closes whatever file reused that number
	// (it was the DNS crash marker `down` reads next: "bad file descriptor").
	closeLn := sync.OnceFunc(func() { ln.Close() })
	path := filepath.Join(UAPIDir, name+".sock")
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	closeAll := func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	}
	stop := context.AfterFunc(ctx, func() { closeLn(); closeAll() })
	defer stop()
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			err = aerr
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.serveUAPIConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	closeLn()
	closeAll()
	wg.Wait()
	_ = os.Remove(path)
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("wireguard control socket %s: %w", path, err)
}

// serveUAPIConn answers one wireguard-tools request. `get` is answered
// here, from the device's own state, so an endpoint that is no IP:port —
// the stream transport's "stream", which wg cannot parse and fails the
// whole `wg show` on — is left out; anything else (`set`) goes to
// wireguard-go as is.
func (d *Device) serveUAPIConn(c net.Conn) {
	br := bufio.NewReader(c)
	op, err := br.Peek(6)
	if err != nil || string(op) != "get=1\n" {
		d.wg.IpcHandle(&prefixedConn{Conn: c, r: br}) // closes c
		return
	}
	defer c.Close()
	for { // the request ends with an empty line
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if line == "\n" {
			break
		}
	}
	state, err := d.wg.IpcGet()
	var out strings.Builder
	if err == nil {
		for line := range strings.Lines(state) {
			if ep, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "endpoint="); ok {
				if _, perr := netip.ParseAddrPort(ep); perr != nil {
					continue
				}
			}
			out.WriteString(line)
		}
		out.WriteString("errno=0\n\n")
	} else {
		out.WriteString("errno=5\n\n") // EIO
	}
	_, _ = c.Write([]byte(out.String()))
}

// prefixedConn replays what was peeked at before handing the connection on.
type prefixedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *prefixedConn) Read(b []byte) (int, error) { return p.r.Read(b) }
