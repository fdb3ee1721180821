package tunnel

import "golang.zx2c4.com/wireguard/conn"

// NewUDPBind returns wireguard-go's default UDP bind, which uses UDP GSO
// and GRO where the kernel offers them.
func NewUDPBind() conn.Bind { return conn.NewDefaultBind() }
