package dptopo

import (
	"golang.zx2c4.com/wireguard/conn"

	"github.com/bridgetun/bridgetun/internal/nstest"
	"github.com/bridgetun/bridgetun/tunnel"
)

// nsBind opens its UDP sockets inside a namespace whichever goroutine calls
// Open: wireguard-go reopens binds from its own goroutines (for example when
// a TUN device reports up), which run in the host's namespace.
type nsBind struct {
	conn.Bind
	ns *nstest.NS
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	derr := b.ns.Do(func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	})
	if derr != nil {
		return nil, 0, derr
	}
	return fns, actual, err
}

// udpBindIn returns a UDP bind whose sockets live in ns.
func udpBindIn(ns *nstest.NS) func() conn.Bind {
	return func() conn.Bind { return &nsBind{Bind: tunnel.NewUDPBind(), ns: ns} }
}
