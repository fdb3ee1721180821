package obs

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestComponentOnce: nested components (and a With("component") under
// one) print one label, the innermost, and keep the other attributes.
func TestComponentOnce(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}))
	for _, tc := range []struct {
		log  *slog.Logger
		want string
	}{
		{Component(base, "client"), `level=INFO msg=hi component=client`},
		{Component(Component(Component(base, "client"), "tunnel"), "wireguard"), `level=INFO msg=hi component=wireguard`},
		{Component(Component(base, "client").With("peer", "gw"), "tunnel"), `level=INFO msg=hi peer=gw component=tunnel`},
		{Component(base, "tun").With("dev", "bt0").With("component", "tun2"), `level=INFO msg=hi dev=bt0 component=tun2`},
		{Component(base.With("pid", 7), "session"), `level=INFO msg=hi pid=7 component=session`},
	} {
		buf.Reset()
		tc.log.Info("hi")
		if got := strings.TrimSpace(buf.String()); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
	if n := strings.Count(buf.String(), "component="); n != 1 {
		t.Errorf("component printed %d times, want once", n)
	}
	Component(nil, "x").Info("discarded") // must not panic
}
