/* SPDX-License-Identifier: MIT
 *
 * bridgetun: inline lone packets.
 */

package device

import (
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"
)

// Upstream hands every packet through two goroutines on each side: a TUN
// read goes to an encryption worker and then to the peer's sequential
// sender; a received datagram to a decryption worker and then to the
// peer's sequential receiver. Under load that buys parallel crypto; for a
// lone packet with nothing queued ahead of it (a request, its reply, an
// ACK) it only adds two goroutine wake-ups per side, 5–20 µs each on an
// idle core. With inline lone packets on, a read or receive that yields
// one packet, for a peer whose queue in that direction is empty, is sealed
// and sent (or opened and written to the TUN) by the goroutine that read
// it. A batch with packets for several peers keeps the workers: done
// inline, one goroutine would do serially what the workers do in
// parallel, and every peer in the batch would wait for the others.
//
// Order is kept: a per-peer mutex covers both the check that nothing is
// queued and the hand-off of what is, and the sequential routines count
// down what they finish, so an inline packet never overtakes one queued
// before it.

// peerInline is a peer's state for inline lone packets.
type peerInline struct {
	sendOrder      sync.Mutex   // held from taking nonces to dispatch
	outboundQueued atomic.Int32 // containers handed to the sequential sender, not yet sent
	sealNonce      [chacha20poly1305.NonceSize]byte
	sealPadding    [PaddingMultiple]byte
	sendBufs       [][]byte

	receiveOrder  sync.Mutex   // held from the queue check to dispatch or delivery
	inboundQueued atomic.Int32 // containers handed to the sequential receiver, not yet written
	openNonce     [chacha20poly1305.NonceSize]byte
	receiveBufs   [][]byte
}

// SetInlineLonePackets turns inline lone packets on or off (off, as
// upstream, by default).
func (device *Device) SetInlineLonePackets(on bool) {
	device.inlineLone.Store(on)
}

// InlineLonePackets reports whether inline lone packets are on and how
// many packets went inline each way.
func (device *Device) InlineLonePackets() (on bool, sent, received uint64) {
	return device.inlineLone.Load(), device.inlineSent.Load(), device.inlineReceived.Load()
}

// dispatchOutbound sends a container of nonce-stamped elements inline when
// it is a lone packet with nothing queued ahead of it, else hands it to the
// encryption workers and the sequential sender. ordered says the caller
// holds peer.inline.sendOrder.
func (peer *Peer) dispatchOutbound(elemsContainer *QueueOutboundElementsContainer, ordered bool) {
	if ordered && elemsContainer.loneRead && len(elemsContainer.elems) == 1 && peer.inline.outboundQueued.Load() == 0 {
		in := &peer.inline
		peer.device.seal(elemsContainer.elems[0], &in.sealNonce, &in.sealPadding)
		if in.sendBufs == nil {
			in.sendBufs = make([][]byte, 0, 1)
		}
		peer.device.inlineSent.Add(1)
		if peer.sendSealed(elemsContainer, in.sendBufs) {
			peer.keepKeyFreshSending()
		}
		return
	}
	peer.inline.outboundQueued.Add(1)
	peer.queue.outbound.c <- elemsContainer
	peer.device.queue.encryption.c <- elemsContainer
}

// dispatchInbound opens and delivers a container of received elements
// inline when it is a lone packet with nothing queued ahead of it and the
// only container of its receive (lone), else hands it to the decryption
// workers and the sequential receiver.
func (peer *Peer) dispatchInbound(elemsContainer *QueueInboundElementsContainer, lone bool) {
	in := &peer.inline
	if peer.device.inlineLone.Load() {
		in.receiveOrder.Lock()
		defer in.receiveOrder.Unlock()
		if lone && len(elemsContainer.elems) == 1 && in.inboundQueued.Load() == 0 {
			elemsContainer.elems[0].open(&in.openNonce)
			if in.receiveBufs == nil {
				in.receiveBufs = make([][]byte, 0, 1)
			}
			peer.device.inlineReceived.Add(1)
			peer.deliverOpened(elemsContainer, in.receiveBufs)
			return
		}
	}
	in.inboundQueued.Add(1)
	peer.queue.inbound.c <- elemsContainer
	peer.device.queue.decryption.c <- elemsContainer
}

// resetInline clears the queue counts when the peer starts, after its
// queues were flushed.
func (peer *Peer) resetInline() {
	peer.inline.outboundQueued.Store(0)
	peer.inline.inboundQueued.Store(0)
}
