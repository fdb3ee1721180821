package sidecar

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/bridgetun/bridgetun/agent/api"
)

// Header-propagation traces (agent/api/trace.go): in HTTP mode the sidecar
// reports to the gateway each request that carries a trace's route-as
// value, and, while a trace is open (the route table's TraceEpoch), its
// first request without the header. A report is made before the request
// is passed on, so by the time a trace's request is answered every hop it
// passed has reported. Reports are bounded (maxTraceReports in flight, one
// header-less report per epoch) and their failures never touch the
// request.

const (
	traceReportTimeout = time.Second
	maxTraceReports    = 4
)

// traceReporter makes the sidecar's trace reports.
type traceReporter struct {
	report func(ctx context.Context, routeAs string) error // nil = no reports
	log    *slog.Logger
	slots  chan struct{} // reports in flight

	mu    sync.Mutex
	epoch uint64     // of the last header-less report
	once  *sync.Once // that report, shared by the requests of its epoch
}

func newTraceReporter(report func(ctx context.Context, routeAs string) error, log *slog.Logger) *traceReporter {
	return &traceReporter{report: report, log: log, slots: make(chan struct{}, maxTraceReports), once: new(sync.Once)}
}

// observe reports a request whose route-as header is routeAs, if a trace
// asks about it: a trace value always, a request without the header once
// per open epoch (concurrent ones wait for that report).
func (t *traceReporter) observe(ctx context.Context, epoch uint64, routeAs string) {
	if t.report == nil {
		return
	}
	switch {
	case strings.HasPrefix(routeAs, api.TracePrefix):
		t.send(ctx, routeAs)
	case routeAs == "" && epoch != 0:
		t.mu.Lock()
		if t.epoch != epoch {
			t.epoch, t.once = epoch, new(sync.Once)
		}
		once := t.once
		t.mu.Unlock()
		once.Do(func() { t.send(ctx, "") })
	}
}

// send makes one report within traceReportTimeout, unless maxTraceReports
// are in flight already.
func (t *traceReporter) send(ctx context.Context, routeAs string) {
	select {
	case t.slots <- struct{}{}:
		defer func() { <-t.slots }()
	default:
		t.log.Debug("trace report skipped: too many in flight", "route_as", routeAs)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), traceReportTimeout)
	defer cancel()
	if err := t.report(ctx, routeAs); err != nil {
		t.log.Debug("trace report failed", "route_as", routeAs, "err", err)
	}
}
