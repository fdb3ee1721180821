// Package tunnel runs bridgetun's WireGuard data plane: keys, device
// configuration, the wireguard-go device wrapper, the transports that carry
// WireGuard datagrams (plain UDP, or a length-framed byte stream such as a
// Kubernetes port-forward) and the kernel TUN used in root mode.
//
// Everything here is built on wireguard-go's seams: transports implement
// conn.Bind, TUN and netstack modes both hand a tun.Device to NewDevice.
package tunnel
