package agent

import (
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/conn"
)

// dualBind lets one WireGuard device listen on UDP and on the stream
// transport at once, so each workstation can pick whichever reaches the
// gateway. wireguard-go learns a peer's endpoint from authenticated packets,
// so a peer that switches transport simply roams.
type dualBind struct {
	udp    conn.Bind // may be nil
	stream conn.Bind // may be nil
}

var _ conn.Bind = (*dualBind)(nil)

func (b *dualBind) binds() []conn.Bind {
	var out []conn.Bind
	for _, c := range []conn.Bind{b.udp, b.stream} {
		if c != nil {
			out = append(out, c)
		}
	}
	return out
}

// Open opens every child bind; the port applies to UDP.
func (b *dualBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var fns []conn.ReceiveFunc
	actual := port
	for _, c := range b.binds() {
		f, p, err := c.Open(port)
		if err != nil {
			_ = b.Close()
			return nil, 0, fmt.Errorf("open %T: %w", c, err)
		}
		if c == b.udp {
			actual = p
		}
		fns = append(fns, clampBatch(f, c.BatchSize())...)
	}
	return fns, actual, nil
}

// clampBatch keeps each child's receive calls within its own batch size.
func clampBatch(fns []conn.ReceiveFunc, n int) []conn.ReceiveFunc {
	out := make([]conn.ReceiveFunc, len(fns))
	for i, f := range fns {
		out[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			if len(packets) > n {
				packets, sizes, eps = packets[:n], sizes[:n], eps[:n]
			}
			return f(packets, sizes, eps)
		}
	}
	return out
}

func (b *dualBind) Close() error {
	var errs []error
	for _, c := range b.binds() {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

func (b *dualBind) SetMark(mark uint32) error {
	var errs []error
	for _, c := range b.binds() {
		errs = append(errs, c.SetMark(mark))
	}
	return errors.Join(errs...)
}

// Send routes by endpoint type: UDP endpoints are wireguard-go's own type,
// everything else came from the stream bind.
func (b *dualBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	target := b.stream
	if _, ok := ep.(*conn.StdNetEndpoint); ok || target == nil {
		target = b.udp
	}
	if target == nil {
		return conn.ErrWrongEndpointType
	}
	max := target.BatchSize()
	for len(bufs) > 0 {
		n := min(len(bufs), max)
		if err := target.Send(bufs[:n], ep); err != nil {
			return err
		}
		bufs = bufs[n:]
	}
	return nil
}

// ParseEndpoint prefers UDP ("host:port"); anything else is a stream endpoint.
func (b *dualBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	var errs []error
	for _, c := range b.binds() {
		ep, err := c.ParseEndpoint(s)
		if err == nil {
			return ep, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("parse endpoint %q: %w", s, errors.Join(errs...))
}

func (b *dualBind) BatchSize() int {
	n := 1
	for _, c := range b.binds() {
		n = max(n, c.BatchSize())
	}
	return n
}
