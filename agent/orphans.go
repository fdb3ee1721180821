package agent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/bridgetun/bridgetun/internal/obs"

	"github.com/bridgetun/bridgetun/agent/api"
)

// PatchedWorkload is a workload carrying an intercept patch.
type PatchedWorkload struct {
	api.Workload
	PatchedAt time.Time
	// Grace is the hold the patching workstation asked for, recorded on the
	// workload itself so it outlives a gateway restart; 0 = not recorded
	// (OrphanConfig.Grace applies).
	Grace time.Duration
}

// errHeld: an intercept holds the workload, so it stays patched.
var errHeld = errors.New("held by an intercept")

// WorkloadRestorer lists and restores patched workloads; the agent binary
// implements it with the Kubernetes API (this package stays client-go free).
type WorkloadRestorer interface {
	// Patched lists the workloads in the gateway's namespace that carry a patch.
	Patched(ctx context.Context) ([]PatchedWorkload, error)
	// Restore puts a workload's original pod template back.
	Restore(ctx context.Context, w api.Workload) error
}

// OrphanConfig configures RunOrphanRestorer.
type OrphanConfig struct {
	Intercepts *Intercepts
	Restorer   WorkloadRestorer
	// Grace is how long a patched workload that records no grace of its own
	// and that nothing in the table holds is left alone after the later of
	// its patch and this gateway's start (a workstation re-adds its
	// intercepts after a gateway restart). 0 = 30 s.
	Grace time.Duration
	Every time.Duration // 0 = 5 s: how often patched workloads are listed
	Log   *slog.Logger  // nil discards
	Now   func() time.Time
}

// RunOrphanRestorer restores workloads whose intercepts are gone: at once
// when the last intercept's lease and grace hold have both run out (a
// workstation killed, a lid closed for longer than the grace), and by a
// periodic sweep for patches the table does not hold (the gateway
// restarted, a client crashed between patch and register). The sweep
// leaves a workload alone for its recorded grace after the later of its
// patch and this gateway's start: the table's holds died with the previous
// gateway, and a workstation asleep then may still come back within its
// grace. It returns when ctx ends.
func RunOrphanRestorer(ctx context.Context, cfg OrphanConfig) {
	if cfg.Grace == 0 {
		cfg.Grace = 30 * time.Second
	}
	if cfg.Every == 0 {
		cfg.Every = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = obs.Component(log, "orphans")
	start := cfg.Now()
	restore := func(w api.Workload, why string) {
		err := cfg.Intercepts.WithWorkloads(func() error {
			if cfg.Intercepts.Holds(w) {
				return errHeld
			}
			return cfg.Restorer.Restore(ctx, w)
		})
		switch {
		case errors.Is(err, errHeld):
		case err != nil:
			log.Warn("restore workload", "workload", w.String(), "err", err)
		default:
			log.Info("workload restored", "workload", w.String(), "why", why)
		}
	}
	t := time.NewTicker(cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-cfg.Intercepts.Kick():
			for _, w := range cfg.Intercepts.TakeExpired() {
				restore(w, "intercept lease and grace expired")
			}
		case <-t.C:
			ws, err := cfg.Restorer.Patched(ctx)
			if err != nil {
				log.Warn("list patched workloads", "err", err)
				continue
			}
			for _, w := range ws {
				since := w.PatchedAt
				if start.After(since) {
					since = start
				}
				grace := min(w.Grace, api.MaxGrace)
				if grace <= 0 {
					grace = cfg.Grace
				}
				if cfg.Now().Sub(since) >= grace {
					restore(w.Workload, "no intercept holds it")
				}
			}
		}
	}
}
