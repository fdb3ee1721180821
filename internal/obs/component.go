package obs

import (
	"context"
	"log/slog"
)

// Component returns l labelled component=name. A logger handed from one
// component to the next keeps one label, the innermost — with plain
// l.With("component", …) each layer added its own and a wireguard-go line
// read "component=client component=tunnel component=wireguard". nil l
// discards.
func Component(l *slog.Logger, name string) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	inner := l.Handler()
	if h, ok := inner.(*componentHandler); ok {
		inner = h.inner
	}
	return slog.New(&componentHandler{inner: inner, name: name})
}

// componentHandler adds the component attribute to every record, after the
// logger's own attributes; the wrapped handler never holds one itself.
type componentHandler struct {
	inner slog.Handler
	name  string
}

func (h *componentHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *componentHandler) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(slog.String("component", h.name))
	return h.inner.Handle(ctx, r)
}

// WithAttrs keeps a "component" among attrs as the new name instead of a
// second attribute.
func (h *componentHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	name, kept := h.name, make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		if a.Key == "component" {
			name = a.Value.String()
			continue
		}
		kept = append(kept, a)
	}
	return &componentHandler{inner: h.inner.WithAttrs(kept), name: name}
}

func (h *componentHandler) WithGroup(g string) slog.Handler {
	return &componentHandler{inner: h.inner.WithGroup(g), name: h.name}
}
