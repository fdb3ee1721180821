/* SPDX-License-Identifier: MIT
 *
 * bridgetun: tests of compact buffers (pools.go).
 */

package device

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// countSmallBuffers makes dev's small-buffer pool count what it creates.
func countSmallBuffers(dev *Device) *atomic.Int64 {
	var n atomic.Int64
	dev.pool.smallMessageBuffers = NewWaitPool(0, func() any {
		n.Add(1)
		return new([smallMessageSize]byte)
	})
	return &n
}

// transit sends pkt into from's TUN and wants it unchanged out of to's.
func transit(t *testing.T, from, to *testPeer, pkt []byte) {
	t.Helper()
	from.tun.Outbound <- pkt
	select {
	case got := <-to.tun.Inbound:
		if !bytes.Equal(got, pkt) {
			t.Fatalf("%d-byte packet changed in transit", len(pkt))
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%d-byte packet did not transit", len(pkt))
	}
}

// bigPing is an echo request padded to size bytes, its total length fixed.
func bigPing(p0, p1 *testPeer, size int) []byte {
	pkt := tuntest.Ping(p1.ip, p0.ip)
	pkt = append(pkt, make([]byte, size-len(pkt))...)
	binary.BigEndian.PutUint16(pkt[2:4], uint16(size))
	return pkt
}

func TestCompactBuffers(t *testing.T) {
	for _, compact := range []bool{false, true} {
		name := map[bool]string{false: "upstream", true: "compact"}[compact]
		t.Run(name, func(t *testing.T) {
			pair := genTestPair(t, true)
			var made [2]*atomic.Int64
			for i := range pair {
				made[i] = countSmallBuffers(pair[i].dev)
				pair[i].dev.SetCompactBuffers(compact, compact)
			}
			// Small packets take small buffers both ways; one larger than a
			// small buffer still travels in a 64 KiB one.
			for _, size := range []int{0, 1400, 1900, 3000} {
				var pkt []byte
				if size == 0 {
					pkt = tuntest.Ping(pair[1].ip, pair[0].ip)
				} else {
					pkt = bigPing(&pair[0], &pair[1], size)
				}
				transit(t, &pair[0], &pair[1], pkt)
				transit(t, &pair[1], &pair[0], bigPingReverse(pkt, &pair[1], &pair[0]))
			}
			for i := range pair {
				if got := made[i].Load(); compact && got == 0 {
					t.Errorf("device %d: no small buffer was taken with compact buffers on", i)
				} else if !compact && got != 0 {
					t.Errorf("device %d: %d small buffers taken with compact buffers off", i, got)
				}
			}
		})
	}
}

// bigPingReverse is pkt with its addresses set for the other direction.
func bigPingReverse(pkt []byte, from, to *testPeer) []byte {
	r := bytes.Clone(pkt)
	src, dst := from.ip.As4(), to.ip.As4()
	copy(r[12:16], src[:])
	copy(r[16:20], dst[:])
	return r
}
