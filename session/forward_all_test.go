package session

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bridgetun/bridgetun/internal/testkit"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"
)

// TestForwardAll follows --forward-all through Services coming, changing and
// going: after each change, the listeners bound and Status's forwards must
// be exactly the expected ones.
func TestForwardAll(t *testing.T) {
	n := newFakeNet()
	fs, cs := testForwards(t, []string{"stats=19090"}, true, n.listen,
		service("api", "10.96.0.5", port{80, corev1.ProtocolTCP, "http"}, port{53, corev1.ProtocolUDP, "dns"}),
		service("db", "10.96.0.6", port{5432, "", ""}),
		service("ext", "", port{443, "", ""}), // ExternalName: no ClusterIP
		service("headless", corev1.ClusterIPNone, port{80, "", ""}),
		service("stats", "10.96.0.3", port{9090, "", ""}),
	)
	// The fake's watch starts from "now", not from the list's resource
	// version as a real API server does: changes wait until it is open.
	watching := make(chan struct{}, 1)
	cs.PrependWatchReactor("services", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := cs.Tracker().Watch(a.GetResource(), a.GetNamespace())
		select {
		case watching <- struct{}{}:
		default:
		}
		return true, w, err
	})
	progress := &testkit.LockedBuffer{}
	fs.cfg.Note = func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	n.fail["tcp 127.0.0.5:9000"] = syscall.EADDRINUSE // something else holds it
	if err := fs.Open(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	services := cs.CoreV1().Services("app")
	ctx := t.Context()
	opens := func() (n int) {
		for _, l := range strings.Split(progress.String(), "\n") {
			if strings.HasPrefix(l, "forwarding ") {
				n++
			}
		}
		return n
	}

	// want checks Status's forwards now (the first round of the watch is in
	// before startForwards returns) or, after a change, within a deadline.
	want := func(step string, poll bool, forwards ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := renderForwards(fs.list())
			var bound []string
			for _, f := range fs.list() {
				bound = append(bound, f.network()+" "+f.Local+">"+f.Remote)
			}
			slices.Sort(bound)
			if slices.Equal(got, forwards) && slices.Equal(n.bound(), bound) {
				return
			}
			if !poll || time.Now().After(deadline) {
				t.Fatalf("%s: forwards:\ngot  %q\nwant %q\nbound: %q", step, got, forwards, n.bound())
			}
			time.Sleep(10 * time.Millisecond) // polling the watch's effect with a deadline
		}
	}
	want("start", false,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"api 80/tcp 127.0.0.3:10080>10.96.0.5:80",
		"api 53/udp 127.0.0.3:10053>10.96.0.5:53",
		"db 5432/tcp 127.0.0.4:5432>10.96.0.6:5432",
	)

	select {
	case <-watching:
	case <-time.After(10 * time.Second):
		t.Fatal("no watch of Services within 10s")
	}
	if _, err := services.Create(ctx, service("web", "10.96.0.7", port{8080, "", ""}, port{9000, "", ""}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("web added; its port 9000 cannot be bound", true,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"api 80/tcp 127.0.0.3:10080>10.96.0.5:80",
		"api 53/udp 127.0.0.3:10053>10.96.0.5:53",
		"db 5432/tcp 127.0.0.4:5432>10.96.0.6:5432",
		"web 8080/tcp 127.0.0.5:8080>10.96.0.7:8080",
	)

	if _, err := services.Update(ctx, service("db", "10.96.0.6", port{5433, "", ""}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("db's port changed", true,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"api 80/tcp 127.0.0.3:10080>10.96.0.5:80",
		"api 53/udp 127.0.0.3:10053>10.96.0.5:53",
		"db 5433/tcp 127.0.0.4:5433>10.96.0.6:5433",
		"web 8080/tcp 127.0.0.5:8080>10.96.0.7:8080",
	)

	if err := services.Delete(ctx, "api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api deleted", true,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"db 5433/tcp 127.0.0.4:5433>10.96.0.6:5433",
		"web 8080/tcp 127.0.0.5:8080>10.96.0.7:8080",
	)

	if _, err := services.Create(ctx, service("api", "10.96.0.8", port{80, "", ""}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("api back: its old address", true,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"api 80/tcp 127.0.0.3:10080>10.96.0.8:80",
		"db 5433/tcp 127.0.0.4:5433>10.96.0.6:5433",
		"web 8080/tcp 127.0.0.5:8080>10.96.0.7:8080",
	)

	if _, err := services.Update(ctx, service("db", corev1.ClusterIPNone, port{5433, "", ""}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := services.Delete(ctx, "stats", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	before := opens()
	web := service("web", "10.96.0.7", port{8080, "", ""}, port{9000, "", ""}, port{7000, corev1.ProtocolUDP, ""})
	web.Labels = map[string]string{"tier": "front"}
	if _, err := services.Update(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("db headless, explicit stats deleted (its listener stays), web gains a UDP port", true,
		"stats 9090/tcp 127.0.0.2:19090>10.96.0.3:9090",
		"api 80/tcp 127.0.0.3:10080>10.96.0.8:80",
		"web 8080/tcp 127.0.0.5:8080>10.96.0.7:8080",
		"web 7000/udp 127.0.0.5:7000>10.96.0.7:7000",
	)
	if got := opens() - before; got != 1 {
		t.Errorf("listeners opened for web's new port: got %d, want 1 (the others stay as they are)", got)
	}

	out := progress.String()
	for _, line := range []string{
		"forwarding 127.0.0.3:10080 to 10.96.0.5:80 api\n",
		"forwarding 127.0.0.3:10053 to 10.96.0.5:53 api (udp)\n",
		"stopped forwarding 127.0.0.4:5432 to 10.96.0.6:5432 db\n",
		"stopped forwarding 127.0.0.3:10053 to 10.96.0.5:53 api (udp)\n",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("progress: missing %q in\n%s", line, out)
		}
	}
	if got := strings.Count(out, "below 1024"); got != 1 {
		t.Errorf("progress: got %d notes on ports below 1024, want 1 in\n%s", got, out)
	}

	fs.Close()
	if got := n.bound(); len(got) != 0 {
		t.Errorf("after stop: got %q still bound, want nothing", got)
	}
	if got := fs.list(); len(got) != 0 {
		t.Errorf("after stop: got forwards %q, want none", renderForwards(got))
	}
}

func TestForwardAllNoList(t *testing.T) {
	defer func(d time.Duration) { forwardAllSyncTimeout = d }(forwardAllSyncTimeout)
	forwardAllSyncTimeout = 300 * time.Millisecond
	n := newFakeNet()
	fs, cs := testForwards(t, []string{"stats"}, true, n.listen, service("stats", "10.96.0.3", port{80, "", ""}))
	cs.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New(`services is forbidden: User "dev" cannot list resource "services"`)
	})
	err := fs.Open(t.Context())
	if err == nil || !strings.Contains(err.Error(), `--forward-all: no list of the Services in "app"`) {
		t.Fatalf("got %v, want an error about listing Services", err)
	}
	if got := n.bound(); len(got) != 0 {
		t.Errorf("after the error: got %q still bound, want nothing", got)
	}
}
