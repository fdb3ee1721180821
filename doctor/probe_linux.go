package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// osProbeUDP sends one datagram with IP_PMTUDISC_DO (the don't-fragment
// bit, and EMSGSIZE instead of local fragmentation) and waits for a reply.
func osProbeUDP(ctx context.Context, addr string, pkt []byte) ([]byte, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.DialContext(ctx, "udp4", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	}
	if _, err := c.Write(pkt); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return nil, fmt.Errorf("%w: %v", errMsgSize, err)
		}
		return nil, err
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func osInterfaceMTU(name string) (int, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifi.MTU, nil
}
