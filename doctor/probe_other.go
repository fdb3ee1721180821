//go:build !linux

package doctor

import "context"

// Setting the don't-fragment bit portably needs per-OS options; until
// then the MTU check says it was not inspected here.
var (
	osProbeUDP     func(ctx context.Context, addr string, pkt []byte) ([]byte, error)
	osInterfaceMTU func(name string) (int, error)
)
