/* SPDX-License-Identifier: MIT
 *
 * Copyright (C) 2017-2025 WireGuard LLC. All Rights Reserved.
 */

package device

import (
	"sync"
)

type WaitPool struct {
	pool  sync.Pool
	cond  sync.Cond
	lock  sync.Mutex
	count uint32 // Get calls not yet Put back
	max   uint32
}

func NewWaitPool(max uint32, new func() any) *WaitPool {
	p := &WaitPool{pool: sync.Pool{New: new}, max: max}
	p.cond = sync.Cond{L: &p.lock}
	return p
}

func (p *WaitPool) Get() any {
	if p.max != 0 {
		p.lock.Lock()
		for p.count >= p.max {
			p.cond.Wait()
		}
		p.count++
		p.lock.Unlock()
	}
	return p.pool.Get()
}

func (p *WaitPool) Put(x any) {
	p.pool.Put(x)
	if p.max == 0 {
		return
	}
	p.lock.Lock()
	defer p.lock.Unlock()
	p.count--
	p.cond.Signal()
}

func (device *Device) PopulatePools() {
	device.pool.inboundElementsContainer = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		s := make([]*QueueInboundElement, 0, device.BatchSize())
		return &QueueInboundElementsContainer{elems: s}
	})
	device.pool.outboundElementsContainer = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		s := make([]*QueueOutboundElement, 0, device.BatchSize())
		return &QueueOutboundElementsContainer{elems: s}
	})
	device.pool.messageBuffers = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		return new([MaxMessageSize]byte)
	})
	device.pool.smallMessageBuffers = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		return new([smallMessageSize]byte)
	})
	device.pool.inboundElements = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		return new(QueueInboundElement)
	})
	device.pool.outboundElements = NewWaitPool(PreallocatedBuffersPerPool, func() any {
		return new(QueueOutboundElement)
	})
}

func (device *Device) GetInboundElementsContainer() *QueueInboundElementsContainer {
	c := device.pool.inboundElementsContainer.Get().(*QueueInboundElementsContainer)
	c.Mutex = sync.Mutex{}
	return c
}

func (device *Device) PutInboundElementsContainer(c *QueueInboundElementsContainer) {
	for i := range c.elems {
		c.elems[i] = nil
	}
	c.elems = c.elems[:0]
	device.pool.inboundElementsContainer.Put(c)
}

func (device *Device) GetOutboundElementsContainer() *QueueOutboundElementsContainer {
	c := device.pool.outboundElementsContainer.Get().(*QueueOutboundElementsContainer)
	c.Mutex = sync.Mutex{}
	c.loneRead = false
	return c
}

func (device *Device) PutOutboundElementsContainer(c *QueueOutboundElementsContainer) {
	for i := range c.elems {
		c.elems[i] = nil
	}
	c.elems = c.elems[:0]
	device.pool.outboundElementsContainer.Put(c)
}

func (device *Device) GetMessageBuffer() *[MaxMessageSize]byte {
	return device.pool.messageBuffers.Get().(*[MaxMessageSize]byte)
}

func (device *Device) PutMessageBuffer(msg *[MaxMessageSize]byte) {
	device.pool.messageBuffers.Put(msg)
}

// bridgetun: compact buffers.
//
// Upstream gives every queued packet a MaxMessageSize (64 KiB) buffer,
// whatever its size, and its queues never drop, so a gateway holding a few
// thousand small packets holds a few hundred MiB. With compact buffers on,
// a packet that fits smallMessageSize is copied into a buffer of that size
// as it is queued (one copy of at most 2 KiB), and the 64 KiB read slot is
// reused at once. Queue elements carry their buffer as a slice whose
// capacity says which pool it returns to.

// smallMessageSize holds a transport message for an inner MTU up to 2000:
// header, packet, padding to 16 and the tag.
const smallMessageSize = 2048

// SetCompactBuffers turns compact buffers on or off, for packets read from
// the TUN (outbound) and for packets received from peers (inbound). Inbound
// compaction suits a TUN whose Write does not coalesce packets into the
// spare capacity of their buffers (the Linux TUN's GRO does; a netstack
// link endpoint that copies does not).
func (device *Device) SetCompactBuffers(outbound, inbound bool) {
	device.compactOutbound.Store(outbound)
	device.compactInbound.Store(inbound)
}

// CompactBuffers reports what SetCompactBuffers set.
func (device *Device) CompactBuffers() (outbound, inbound bool) {
	return device.compactOutbound.Load(), device.compactInbound.Load()
}

func (device *Device) getSmallMessageBuffer() *[smallMessageSize]byte {
	return device.pool.smallMessageBuffers.Get().(*[smallMessageSize]byte)
}

// putBuffer returns an element's buffer to the pool its capacity names.
func (device *Device) putBuffer(b []byte) {
	switch cap(b) {
	case MaxMessageSize:
		device.pool.messageBuffers.Put((*[MaxMessageSize]byte)(b[:MaxMessageSize]))
	case smallMessageSize:
		device.pool.smallMessageBuffers.Put((*[smallMessageSize]byte)(b[:smallMessageSize]))
	}
}

func (device *Device) GetInboundElement() *QueueInboundElement {
	return device.pool.inboundElements.Get().(*QueueInboundElement)
}

func (device *Device) PutInboundElement(elem *QueueInboundElement) {
	elem.clearPointers()
	device.pool.inboundElements.Put(elem)
}

func (device *Device) GetOutboundElement() *QueueOutboundElement {
	return device.pool.outboundElements.Get().(*QueueOutboundElement)
}

func (device *Device) PutOutboundElement(elem *QueueOutboundElement) {
	elem.clearPointers()
	device.pool.outboundElements.Put(elem)
}
