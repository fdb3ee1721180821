/* SPDX-License-Identifier: MIT
 *
 * bridgetun: tests of inline lone packets (inline.go).
 */

package device

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// batchTUN is a ChannelTUN whose reads come from batches: each Read
// returns one batch the test queued, so the test chooses which packets
// wireguard-go sees together and which alone.
type batchTUN struct {
	tun.Device
	batches chan [][]byte
	closed  chan struct{}
}

const testBatch = 16

func (b *batchTUN) BatchSize() int { return testBatch }

func (b *batchTUN) Read(packets [][]byte, sizes []int, offset int) (int, error) {
	select {
	case batch := <-b.batches:
		for i, pkt := range batch {
			sizes[i] = copy(packets[i][offset:], pkt)
		}
		return len(batch), nil
	case <-b.closed:
		return 0, os.ErrClosed
	}
}

func (b *batchTUN) Close() error {
	close(b.closed)
	return b.Device.Close()
}

// tailSplitBind returns every received batch of more than one packet in
// two reads: all but its last packet, then the last one alone, so the
// receiving device sees a lone packet right behind a batch that may still
// be in its workers.
type tailSplitBind struct{ conn.Bind }

func (b tailSplitBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, fn := range fns {
		var (
			stash    []byte
			stashed  bool
			stashEnd conn.Endpoint
		)
		fns[i] = func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			if stashed {
				stashed = false
				sizes[0] = copy(bufs[0], stash)
				eps[0] = stashEnd
				return 1, nil
			}
			n, err := fn(bufs, sizes, eps)
			if err != nil || n < 2 {
				return n, err
			}
			stash = append(stash[:0], bufs[n-1][:sizes[n-1]]...)
			stashEnd, stashed = eps[n-1], true
			return n - 1, nil
		}
	}
	return fns, actual, err
}

// genInlinePair is genTestPair over real sockets with batching TUNs and
// inline lone packets set as asked.
func genInlinePair(t *testing.T, inline bool) (pair testPair, batches [2]chan [][]byte) {
	cfg, endpointCfg := genConfigs(t)
	for i := range pair {
		p := &pair[i]
		p.tun = tuntest.NewChannelTUN()
		p.ip = netip.AddrFrom4([4]byte{1, 0, 0, byte(i + 1)})
		batches[i] = make(chan [][]byte)
		p.dev = NewDevice(&batchTUN{Device: p.tun.TUN(), batches: batches[i], closed: make(chan struct{})}, tailSplitBind{conn.NewDefaultBind()}, NewLogger(LogLevelError, fmt.Sprintf("dev%d: ", i)))
		p.dev.SetInlineLonePackets(inline)
		if err := p.dev.IpcSet(cfg[i]); err != nil {
			t.Fatalf("configure device %d: %v", i, err)
		}
		if err := p.dev.Up(); err != nil {
			t.Fatalf("bring up device %d: %v", i, err)
		}
		t.Cleanup(p.dev.Close)
		endpointCfg[i^1] = fmt.Sprintf(endpointCfg[i^1], p.dev.net.port)
	}
	for i := range pair {
		if err := pair[i].dev.IpcSet(endpointCfg[i]); err != nil {
			t.Fatalf("configure device endpoint %d: %v", i, err)
		}
	}
	return pair, batches
}

// numberedPing is an echo request from p0 to p1 carrying seq.
func numberedPing(p0, p1 *testPeer, seq uint32) []byte {
	pkt := bigPing(p0, p1, 200)
	binary.BigEndian.PutUint32(pkt[len(pkt)-4:], seq)
	return pkt
}

func TestInlineLonePackets(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			pair, batches := genInlinePair(t, inline)
			// transit reads from ChannelTUN.Outbound; feed those reads in.
			stop := make(chan struct{})
			t.Cleanup(func() { close(stop) })
			for i := range pair {
				go func() {
					for {
						select {
						case pkt := <-pair[i].tun.Outbound:
							select {
							case batches[i] <- [][]byte{pkt}:
							case <-stop:
								return
							}
						case <-stop:
							return
						}
					}
				}()
			}
			// Request/response: every packet is alone in its read and in
			// its receive, so with inline on both sides take the inline path.
			for i := 0; i < 20; i++ {
				pkt := numberedPing(&pair[0], &pair[1], uint32(i))
				transit(t, &pair[0], &pair[1], pkt)
				transit(t, &pair[1], &pair[0], bigPingReverse(pkt, &pair[1], &pair[0]))
			}
			for i := range pair {
				on, sent, received := pair[i].dev.InlineLonePackets()
				if on != inline {
					t.Fatalf("device %d reports inline %v, set %v", i, on, inline)
				}
				if inline && (sent == 0 || received == 0) {
					t.Errorf("device %d: %d packets sent and %d received inline with inline on, want both > 0", i, sent, received)
				}
				if !inline && (sent != 0 || received != 0) {
					t.Errorf("device %d: %d packets sent and %d received inline with inline off", i, sent, received)
				}
			}

			if inline {
				// A read with packets for two peers keeps the workers:
				// inline, one goroutine would serialize both peers' work.
				var ghost NoisePrivateKey
				if _, err := rand.Read(ghost[:]); err != nil {
					t.Fatal(err)
				}
				ghostPub := ghost.publicKey()
				if err := pair[0].dev.IpcSet(uapiCfg("public_key", hex.EncodeToString(ghostPub[:]), "allowed_ip", "1.0.0.3/32")); err != nil {
					t.Fatal(err)
				}
				ghostPeer := bigPingReverse(bigPing(&pair[0], &pair[1], 200), &pair[0], &pair[1])
				copy(ghostPeer[16:20], []byte{1, 0, 0, 3})
				_, before, _ := pair[0].dev.InlineLonePackets()
				pkt := numberedPing(&pair[0], &pair[1], 7777)
				batches[0] <- [][]byte{pkt, ghostPeer} // no endpoint for the ghost: staged, never sent
				select {
				case got := <-pair[1].tun.Inbound:
					if !bytes.Equal(got, pkt) {
						t.Fatal("two-peer batch: packet changed in transit")
					}
				case <-time.After(5 * time.Second):
					t.Fatal("two-peer batch: packet did not transit")
				}
				if _, after, _ := pair[0].dev.InlineLonePackets(); after != before {
					t.Errorf("a read with packets for two peers sent %d inline, want 0", after-before)
				}
			}

			// A burst mixes batches (queued to the workers) with lone
			// packets (inline while nothing is queued): none may overtake
			// one sent before it. Loss is allowed (UDP), reordering is not.
			const burst = 4000
			got := make(chan []uint32, 1)
			done := make(chan struct{})
			go func() {
				var seqs []uint32
				defer func() { got <- seqs }()
				for {
					select {
					case pkt := <-pair[1].tun.Inbound:
						seq := binary.BigEndian.Uint32(pkt[len(pkt)-4:])
						seqs = append(seqs, seq)
						if seq == burst-1 {
							return
						}
					case <-done:
						return
					}
				}
			}()
			// Batches of 16, 1, 16, 1, 1, …: each lone packet right behind
			// a batch that may still be in the workers.
			pattern := []int{testBatch, 1, testBatch, 1, 1}
			for seq, k := 0, 0; seq < burst; k++ {
				var batch [][]byte
				for n := pattern[k%len(pattern)]; n > 0 && seq < burst; n-- {
					batch = append(batch, numberedPing(&pair[0], &pair[1], uint32(seq)))
					seq++
				}
				select {
				case batches[0] <- batch:
				case <-time.After(5 * time.Second):
					t.Fatalf("device 0 stopped reading its TUN at packet %d", seq)
				}
			}
			var seqs []uint32
			select {
			case seqs = <-got:
			case <-time.After(5 * time.Second):
				close(done) // the last packet was lost; judge what arrived
				seqs = <-got
			}
			if len(seqs) < burst/2 {
				t.Fatalf("%d of %d burst packets arrived", len(seqs), burst)
			}
			for i := 1; i < len(seqs); i++ {
				if seqs[i] <= seqs[i-1] {
					t.Fatalf("packet %d arrived after %d: reordered", seqs[i], seqs[i-1])
				}
			}
			_, sent, received := pair[0].dev.InlineLonePackets()
			t.Logf("burst: %d of %d arrived in order; device 0 sent %d inline, device 1 received %d inline", len(seqs), burst, sent, received)
		})
	}
}
