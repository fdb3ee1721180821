package session

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
	"github.com/bridgetun/bridgetun/cluster"
)

// An intercept outlives a sleep. The gateway keeps two lifetimes apart: the
// route lease (15 s; when it runs out the sidecars pass traffic through to
// the original container) and the grace hold (the workload stays patched
// for the intercept's grace after the last renewal). The client renews
// every few seconds and keeps the wall-clock time of the last renewal the
// gateway accepted:
//
//	active ──renewal fails──► reconnecting (since the first failure)
//	active/reconnecting ──renewal answers, route gone──► re-add; workload
//	    still patched → active (no rollout); restored meanwhile → re-patch,
//	    one line saying so → active
//	any ──wall-clock gap since the last good renewal > grace──► lost
//	    (listener released; stays in status until leave or a new intercept)

// now is the wall clock without its monotonic reading: Linux's monotonic
// clock stands still during suspend, so time.Since would hide a sleep.
func (ic *interceptor) now() time.Time { return ic.cfg.Now().Round(0) }

// graceSeconds is InterceptSpec.Grace on the wire (0 = the default); a
// positive grace under a second asks for one second, not the default.
func graceSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return max(1, int(d/time.Second))
}

// grantedGrace is the hold the gateway applies (an older gateway does not
// say: then what was asked, or the default).
func grantedGrace(it api.Intercept, asked time.Duration) time.Duration {
	switch {
	case it.GraceSeconds > 0:
		return time.Duration(it.GraceSeconds) * time.Second
	case asked > 0:
		return asked
	}
	return api.DefaultGrace
}

// renew extends the leases of every intercept that is not lost, once, and
// moves each along its states.
func (ic *interceptor) renew(ctx context.Context) {
	ic.mu.Lock()
	byID := map[string]*interceptState{}
	for _, st := range ic.byService {
		if st.info.State != InterceptLost {
			byID[st.info.ID] = st
		}
	}
	ic.mu.Unlock()
	now := ic.now()
	// A renewal loop that did not run for a while (from the end of one
	// attempt to the start of the next: beyond its interval and some slack)
	// means this machine was asleep or stopped.
	away := !ic.lastAttempt.IsZero() && now.Sub(ic.lastAttempt) > ic.cfg.RenewEvery+wakeSlack
	defer func() { ic.lastAttempt = ic.now() }()
	if len(byID) == 0 {
		return
	}
	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rr, err := ic.cfg.Control.RenewIntercepts(rctx, api.RenewRequest{PublicKey: ic.cfg.PublicKey, IDs: ids})
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if !ic.renewFailing {
			ic.cfg.Log.Warn("renew intercept leases; retrying", "every", ic.cfg.RenewEvery, "err", err)
		}
		ic.renewFailing = true
		for _, st := range byID {
			ic.renewFailed(st, now, away, err)
		}
		return
	}
	if ic.renewFailing {
		ic.cfg.Log.Info("intercept leases renewed again")
	}
	ic.renewFailing = false
	if rr.UnknownPeer && ic.cfg.Reregister != nil {
		if err := ic.cfg.Reregister(rctx); err != nil {
			ic.cfg.Log.Warn("register again (the gateway had forgotten this workstation)", "err", err)
		}
	}
	for id, st := range byID {
		ic.renewed(st, now, away, slices.Contains(rr.Unknown, id))
	}
	if rr.Sidecars != nil {
		ic.mu.Lock()
		for id, st := range byID {
			if pods, ok := rr.Sidecars[id]; ok {
				st.info.Sidecars, st.info.SidecarsKnown = pods, true
			}
		}
		ic.mu.Unlock()
	}
}

// currentLocked reports whether st is still this session's intercept of its
// Service and not lost; ic.mu held.
func (ic *interceptor) currentLocked(st *interceptState) bool {
	return ic.byService[st.info.Service] == st && st.info.State != InterceptLost
}

// lockWithinGrace takes ic.mu and keeps it (returning true) while st is
// still this session's live intercept and its wall-clock silence is within
// the grace. Otherwise it releases ic.mu and returns false, having declared
// an intercept past its grace lost.
func (ic *interceptor) lockWithinGrace(st *interceptState, now time.Time, away bool) bool {
	ic.mu.Lock()
	if !ic.currentLocked(st) {
		ic.mu.Unlock()
		return false
	}
	if gap := now.Sub(st.lastOK); gap > st.grace {
		ic.mu.Unlock()
		ic.lose(st, silenceReason(gap, st.grace, away), "start again with `"+startAgain(st.spec)+"`")
		return false
	}
	return true
}

// renewFailed: the gateway did not answer. Within the grace the intercept
// is reconnecting (the workload stays patched, traffic passes through);
// past it, lost.
func (ic *interceptor) renewFailed(st *interceptState, now time.Time, away bool, err error) {
	if !ic.lockWithinGrace(st, now, away) {
		return
	}
	ic.setStateLocked(st, InterceptReconnecting, now, "gateway unreachable: "+shortErr(err))
	ic.mu.Unlock()
}

// renewed: the gateway answered. A known id that was active stays so; a
// route the gateway dropped (its lease ran out, or the gateway restarted)
// or an intercept coming back from failed renewals goes to the re-attach
// worker; past the grace, the intercept is lost even if the gateway
// answers now.
func (ic *interceptor) renewed(st *interceptState, now time.Time, away, unknown bool) {
	if !ic.lockWithinGrace(st, now, away) {
		return
	}
	if !unknown {
		st.lastOK = now
		if st.info.State == InterceptActive {
			ic.mu.Unlock()
			return
		}
	} else {
		ic.setStateLocked(st, InterceptReconnecting, now, "the gateway had dropped the route; re-attaching")
	}
	ic.pending[st] = ic.pending[st] || unknown
	ic.mu.Unlock()
	select {
	case ic.kick <- struct{}{}:
	default:
	}
}

// setStateLocked moves st to state; StateSince keeps the start of a state
// that continues (only its reason is updated). ic.mu held.
func (ic *interceptor) setStateLocked(st *interceptState, state string, now time.Time, reason string) {
	if st.info.State != state {
		st.info.State, st.info.StateSince = state, now
	}
	st.info.StateReason = reason
}

// reattachLoop runs the re-attach worker until ctx ends.
func (ic *interceptor) reattachLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-ic.kick:
		}
		ic.reattachPending(ctx)
	}
}

// reattachPending re-attaches the intercepts the renewals handed over.
func (ic *interceptor) reattachPending(ctx context.Context) {
	ic.mu.Lock()
	work := ic.pending
	ic.pending = map[*interceptState]bool{}
	ic.mu.Unlock()
	for st, readd := range work {
		if ctx.Err() != nil {
			return
		}
		ic.reattach(ctx, st, readd)
	}
}

// reattach brings an intercept back: re-add it at the gateway if asked,
// then check that its workload still runs our sidecar. If it does, the
// intercept is active again at once, with no rollout; if the workload was
// restored meanwhile (a gateway restart, someone's uninstall) it is patched
// again and says so in one line. A failure leaves it reconnecting; the next
// renewal tries again.
func (ic *interceptor) reattach(ctx context.Context, st *interceptState, readd bool) {
	ic.op.Lock()
	defer ic.op.Unlock()
	ic.mu.Lock()
	ok := ic.currentLocked(st)
	ic.mu.Unlock()
	if !ok {
		return // left, lost or replaced meanwhile
	}
	stillFailing := func(why string) {
		ic.mu.Lock()
		if ic.currentLocked(st) {
			ic.setStateLocked(st, InterceptReconnecting, ic.now(), why)
		}
		ic.mu.Unlock()
		ic.cfg.Log.Warn("re-attach intercept", "service", st.info.Service, "err", why)
	}
	// The gateway patches again on a re-add when the workload was
	// restored meanwhile.
	repatched := false
	if readd {
		it, err := ic.cfg.Control.AddIntercept(ctx, st.req)
		if isUnknownPeer(err) && ic.cfg.Reregister != nil {
			if rerr := ic.cfg.Reregister(ctx); rerr == nil {
				it, err = ic.cfg.Control.AddIntercept(ctx, st.req)
			}
		}
		switch {
		case isConflict(err):
			// Someone holds it now: they took it while this machine was
			// away, or took it over with --force.
			ic.lose(st, "the gateway gave it to someone else: "+shortErr(err), "start again once they leave with `"+startAgain(st.spec)+"`")
			return
		case isForbidden(err):
			ic.lose(st, "the gateway refused to re-add it: "+shortErr(err), "start again with `"+startAgain(st.spec)+"`")
			return
		case err != nil:
			stillFailing("re-add at the gateway: " + shortErr(err))
			return
		}
		ic.mu.Lock()
		st.info.Target, st.lastOK = it.Target, ic.now()
		ic.mu.Unlock()
		ic.cfg.Log.Info("intercept re-added at the gateway", "service", st.info.Service, "repatched", it.Patched)
		repatched = it.Patched
	}
	switch {
	case repatched:
		if err := ic.waitRepatched(ctx, st); err != nil {
			stillFailing(err.Error())
			return
		}
	default:
		patched, err := cluster.WorkloadPatchedFor(ctx, ic.cfg.Client, st.ref, int32(st.info.ContainerPort))
		if err != nil {
			stillFailing("check " + workloadName(st.ref) + ": " + shortErr(err))
			return
		}
		if !patched {
			if err := ic.repatch(ctx, st); err != nil {
				stillFailing(err.Error())
				return
			}
			repatched = true
		}
	}
	if repatched {
		ic.cfg.Progress("re-patched %s: it had been restored while this machine was away", workloadName(st.ref))
	}
	ic.mu.Lock()
	was := st.info.State
	if ic.currentLocked(st) {
		ic.setStateLocked(st, InterceptActive, ic.now(), "")
	}
	ic.mu.Unlock()
	if was != InterceptActive {
		ic.cfg.Log.Info("intercept re-attached", "service", st.info.Service, "repatched", repatched)
	}
}

// repatch patches st's workload again as Intercept did and waits for its
// pods. The Service is resolved again: the workload's template may have
// been replaced meanwhile (a deploy), and the new one is what gets patched.
func (ic *interceptor) repatch(ctx context.Context, st *interceptState) error {
	ic.mu.Lock()
	ic.setStateLocked(st, InterceptReconnecting, ic.now(), "re-patching "+workloadName(st.ref)+": it had been restored")
	ic.mu.Unlock()
	t, err := cluster.ResolveInterceptTarget(ctx, ic.cfg.Client, st.ref.Namespace, st.spec.Service, st.spec.Port)
	if err != nil {
		return fmt.Errorf("re-patch: %s", shortErr(err))
	}
	if t.Ref().Kind != st.ref.Kind || t.Ref().Name != st.ref.Name || int(t.ContainerPort) != st.info.ContainerPort {
		return fmt.Errorf("re-patch: service %s is now served by %s port %d, not %s port %d: leave and intercept again",
			st.spec.Service, workloadName(t.Ref()), t.ContainerPort, workloadName(st.ref), st.info.ContainerPort)
	}
	// The gateway patches on AddIntercept (checking our rights again).
	if _, err := ic.cfg.Control.AddIntercept(ctx, st.req); err != nil {
		return fmt.Errorf("re-patch %s: %s", workloadName(st.ref), shortErr(err))
	}
	return ic.waitRepatched(ctx, st)
}

// waitRepatched waits for the pods of st's re-patched workload.
func (ic *interceptor) waitRepatched(ctx context.Context, st *interceptState) error {
	wctx, cancel := context.WithTimeout(ctx, ic.cfg.RolloutTimeout)
	defer cancel()
	if err := cluster.WaitRollout(wctx, ic.cfg.Client, st.ref); err != nil {
		return fmt.Errorf("re-patched %s, waiting for its pods: %s", workloadName(st.ref), shortErr(err))
	}
	return nil
}

// lose gives an intercept up: its local listener is released, the gateway
// is told (best effort), and it stays in status as lost, with one line
// (reason; what became of its workload; again: how to start over), until
// `leave` or a new intercept of the Service.
func (ic *interceptor) lose(st *interceptState, reason, again string) {
	ic.mu.Lock()
	if !ic.currentLocked(st) {
		ic.mu.Unlock()
		return
	}
	// Mark it first: no renewal or re-attach picks it up from here.
	ic.setStateLocked(st, InterceptLost, ic.now(), reason)
	delete(ic.pending, st)
	ic.mu.Unlock()
	st.close()
	line := reason + "; " + ic.workloadFate(st) + "; " + again
	ic.mu.Lock()
	st.info.StateReason = line
	ic.mu.Unlock()
	ic.cfg.Progress("lost the intercept of %s: %s", st.info.Service, line)
	ic.cfg.Log.Warn("intercept lost", "service", st.info.Service, "why", line)
}

// workloadFate drops st at the gateway (it may have dropped it already)
// and says what became of its workload: restored (by the gateway, or now
// if nothing else holds it), or kept patched for other intercepts.
func (ic *interceptor) workloadFate(st *interceptState) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ref := workloadName(st.ref)
	lr, lerr := ic.cfg.Control.LeaveIntercept(ctx, api.LeaveRequest{PublicKey: st.req.PublicKey, Namespace: st.req.Namespace, Service: st.req.Service})
	patched, err := cluster.WorkloadPatchedFor(ctx, ic.cfg.Client, st.ref, int32(st.info.ContainerPort))
	switch {
	case err != nil:
		return "the gateway restores " + ref + " once no intercept holds it"
	case !patched:
		return "the gateway restored " + ref
	case lerr == nil && lr.Remaining > 0:
		return fmt.Sprintf("%s stays patched for %d other intercept(s)", ref, lr.Remaining)
	case lerr == nil:
		if err := ic.gatewayRestore(ctx, st.ref); err == nil {
			return "restored " + ref
		}
	}
	return "the gateway restores " + ref + " once no intercept holds it"
}

// silenceReason says why the grace ran out, the first part of a lost line.
func silenceReason(gap, grace time.Duration, away bool) string {
	what := "the gateway was unreachable for"
	if away {
		what = "this machine was away"
	}
	return fmt.Sprintf("%s %s (grace %s)", what, roundDuration(gap), roundDuration(grace))
}

// startAgain is the command that intercepts spec's Service again.
func startAgain(spec InterceptSpec) string {
	port := itoaPort(spec.LocalPort)
	if spec.Port != "" {
		port += ":" + spec.Port
	}
	cmd := "bridgetun intercept " + spec.Service + " --port " + port
	if spec.RouteAs != "" {
		cmd += " --isolate --route-as " + spec.RouteAs
	}
	return cmd
}

func itoaPort(p int) string { return strconv.Itoa(p) }

// workloadName is "deployment/api", as kubectl takes it.
func workloadName(r cluster.WorkloadRef) string { return strings.ToLower(r.Kind) + "/" + r.Name }

// roundDuration prints 45s, 17m, 1h2m, 2h: enough for a status line.
func roundDuration(d time.Duration) string {
	if d < time.Minute {
		return d.Round(time.Second).String()
	}
	s := strings.TrimSuffix(d.Round(time.Minute).String(), "0s") // "17m0s" → "17m"
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m") // "2h0m" → "2h"
	}
	return s
}

// shortErr is an error in a few words: its first line, bounded.
func shortErr(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}
