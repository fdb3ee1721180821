/* SPDX-License-Identifier: MIT
 *
 * bridgetun: a bind's pooled messages stay correct when each call resets
 * only the messages it touched (putMessagesTouched).
 */

package conn

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestStdNetBindReuseMessages sends rounds of coalescable batches, lone
// datagrams and short-tailed batches between two loopback binds, both
// ways, so every pooled message set serves sends and receives of every
// shape in turn; each datagram must arrive whole and unchanged.
func TestStdNetBindReuseMessages(t *testing.T) {
	open := func() (*StdNetBind, ReceiveFunc, Endpoint) {
		b := NewStdNetBind().(*StdNetBind)
		fns, port, err := b.Open(0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		ep, err := b.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		return b, fns[0], ep // fns[0] is IPv4
	}
	a, recvA, epA := open()
	if !a.ipv4RxOffload || !a.ipv4TxOffload {
		t.Logf("UDP GSO/GRO off on loopback (tx %v, rx %v): only the plain path is covered", a.ipv4TxOffload, a.ipv4RxOffload)
	}
	b, recvB, epB := open()
	timer := time.AfterFunc(20*time.Second, func() { a.Close(); b.Close() }) // a lost datagram ends the test, not CI
	defer timer.Stop()

	dgram := func(round, i, size int) []byte {
		p := bytes.Repeat([]byte{byte(round), byte(i)}, size/2+1)[:size]
		return p
	}
	shapes := [][]int{
		{1200, 1200, 1200, 1200, 1200, 1200, 1200, 1200}, // coalesced with GSO
		{90},            // lone
		{700, 700, 300}, // short tail ends the batch
		{1400},          // larger: a new message
		{1300, 1300},
	}
	batch := 128
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, 1<<16)
	}
	sizes := make([]int, batch)
	eps := make([]Endpoint, batch)
	for round := 0; round < 60; round++ {
		from, to, recv := a, epB, recvB
		if round%2 == 1 {
			from, to, recv = b, epA, recvA
		}
		// Every shape is sent before any is read, so one receive may return
		// several messages (both of the offload read's slots filled) and
		// the next only one: a slot left with an old length would show up
		// as an extra or garbled datagram.
		var want [][]byte
		for s, shape := range shapes[:1+round%len(shapes)] {
			var batch [][]byte
			for i, size := range shape {
				batch = append(batch, dgram(round, s*16+i, size))
			}
			if err := from.Send(batch, to); err != nil {
				t.Fatalf("round %d shape %d: send: %v", round, s, err)
			}
			want = append(want, batch...)
		}
		var got [][]byte
		for len(got) < len(want) {
			n, err := recv(bufs, sizes, eps)
			if err != nil {
				t.Fatalf("round %d: receive after %d of %d datagrams: %v", round, len(got), len(want), err)
			}
			for i := 0; i < n; i++ {
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
			}
		}
		if len(got) != len(want) {
			t.Fatalf("round %d: %d datagrams arrived, want %d", round, len(got), len(want))
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d: datagram %d is %d bytes %x…, want %d bytes %x…", round, i, len(got[i]), got[i][:min(4, len(got[i]))], len(want[i]), want[i][:4])
			}
		}
	}
}
