package tunnel

import (
	"context"
	"time"
)

// pathMonitor is implemented by binds that watch their paths and need the
// device to send on demand (SwitchBind). The Device runs monitor while it
// is up and waits for it to return before closing, so monitor may call d
// until its ctx ends.
type pathMonitor interface {
	monitor(ctx context.Context, d pathDevice)
}

// pathDevice is what a monitor asks of the device.
type pathDevice interface {
	// handshake sends a handshake initiation to every peer now, unless
	// one went out in the last 5 s; the current session stays in use.
	handshake()
	// keepalive sends an authenticated keepalive to every peer now, which
	// makes the far end roam to the path it arrives on.
	keepalive()
}

// monitor moves between the paths until ctx ends.
//
// On UDP: once something that wants an answer has gone unanswered for
// FailAfter/2, a handshake asks the gateway to answer (a quiet moment after
// a one-way packet is not an outage), and from then on only its response
// counts as an answer (SwitchBind.asked); at FailAfter the bind moves to the
// stream, resends the initiation UDP lost, if any, and sends a keepalive so
// the gateway roams to the stream at once. A UDP path quiet for IdleCheck
// is checked with a handshake too.
//
// On the stream: every ProbeEvery (doubling to MaxProbeEvery while probes
// fail) the next handshake goes over UDP. Its response arriving over UDP
// proves both directions, and the bind moves back. A response over the
// stream (the gateway roams per packet, and stream data may have come in
// after the probe) proves UDP out only: the bind moves back as well but
// sends no keepalive, so the gateway stays on the stream until our next
// packet over UDP, which wants its answer over UDP; if UDP back fails the
// bind returns to the stream at FailAfter, probing less often from then on. A probe left unanswered
// for ProbeTimeout ends with a keepalive over the stream, so a gateway that
// heard the probe but cannot answer over UDP roams back.
func (b *SwitchBind) monitor(ctx context.Context, d pathDevice) {
	c := b.cfg
	tick := time.NewTicker(min(max(c.FailAfter/8, 10*time.Millisecond), 250*time.Millisecond))
	defer tick.Stop()
	var (
		lastIdle     int64 // on UDP: the last idle check
		backoff      = c.ProbeEvery
		nextProbe    int64 // on the stream: when to probe
		probeExpires int64
		onUDPSince   int64 // when a probe last moved to UDP; 0 = never
	)
	dur := func(d time.Duration) int64 { return int64(d) }
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-b.wake:
		}
		now := b.now()
		if b.active.Load() == pathUDP {
			p := b.pending.Load()
			switch {
			case p == 0:
				b.asked.Store(false)
				if now-max(b.udpRx.Load(), lastIdle) >= dur(c.IdleCheck) {
					lastIdle = now
					d.handshake()
				}
			case now-p >= dur(c.FailAfter):
				b.switchTo(pathStream, "nothing heard over UDP for "+c.FailAfter.String())
				if init := b.takeInit(); init != nil {
					if err := sendIn(b.stream, [][]byte{init}, clientEndpoint{}); err != nil {
						b.log.Debug("resend initiation on the stream", "err", err)
					}
				}
				d.keepalive()
				// Back on the stream soon after a probe moved to UDP: the
				// way back over UDP may be what fails, so probe less often.
				if onUDPSince != 0 && now-onUDPSince < dur(c.MaxProbeEvery) {
					backoff = min(2*backoff, c.MaxProbeEvery)
				} else {
					backoff = c.ProbeEvery
				}
				b.asked.Store(false)
				nextProbe = now + dur(backoff)
			case now-p >= dur(c.FailAfter/2) && !b.asked.Load():
				b.asked.Store(true)
				d.handshake()
			}
			continue
		}
		if b.probing.Load() {
			switch via := b.probeVia.Load(); {
			case via >= 0:
				b.probing.Store(false)
				why := "a handshake over UDP was answered over UDP"
				if via == pathStream {
					why = "a handshake over UDP was answered (over the stream)"
				}
				b.switchTo(pathUDP, why)
				b.udpRx.Store(now)
				lastIdle, onUDPSince = now, now
				if via == pathUDP {
					// Both ways proven: have the gateway roam to UDP now.
					d.keepalive()
				}
				// Answered over the stream, the way back over UDP is
				// unproven: the gateway keeps sending on the stream until
				// our next packet over UDP, which wants an answer over UDP
				// (or the bind moves back at FailAfter). A keepalive now
				// would move the gateway's own sends to UDP with nothing
				// of ours to notice if they are lost.
			case now >= probeExpires && !b.probeSent.Load():
				// wireguard-go had sent a handshake within 5 s and kept
				// this one back: try again soon, it is not UDP's fault.
				b.probing.Store(false)
				nextProbe = now + dur(time.Second)
				b.log.Debug("udp probe held back by wireguard-go's handshake rate limit")
			case now >= probeExpires:
				b.probing.Store(false)
				d.keepalive()
				backoff = min(2*backoff, c.MaxProbeEvery)
				nextProbe = now + dur(backoff)
				b.log.Debug("udp probe unanswered", "next_in", backoff)
			}
			continue
		}
		if now >= nextProbe {
			b.probeVia.Store(-1)
			b.probeSent.Store(false)
			b.probing.Store(true)
			probeExpires = now + dur(c.ProbeTimeout)
			d.handshake()
			b.log.Debug("udp probe", "sent", b.probeSent.Load())
		}
	}
}
