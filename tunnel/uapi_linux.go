package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.zx2c4.com/wireguard/ipc"
)

// UAPIDir is where wireguard-tools look for a userspace device's control
// socket (`wg show NAME` finds NAME.sock there).
const UAPIDir = "/var/run/wireguard"

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
	ln, err := ipc.UAPIListen(name, f)
	if err != nil {
		f.Close()
		return fmt.Errorf("wireguard control socket for %s: %w", name, err)
	}
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
	stop := context.AfterFunc(ctx, func() { ln.Close(); closeAll() })
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
			d.wg.IpcHandle(c) // closes c
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	ln.Close()
	closeAll()
	wg.Wait()
	_ = os.Remove(path)
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("wireguard control socket %s: %w", path, err)
}
