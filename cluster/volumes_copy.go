package cluster

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// CopyFromPod copies the directory srcPath out of a running container into
// dstDir (created 0700 if missing) by exec'ing `tar cf - -C srcPath .` in
// it, as kubectl cp does, so the container image needs tar. Extraction
// never writes outside dstDir: entries with absolute paths or ".." fail the
// copy; directories, regular files, hard links (copied) and symlinks with a
// relative target free of ".." are written; other symlinks (they would
// point outside dstDir) and devices, FIFOs and sockets are skipped. Files
// keep their mode bits, plus owner read and write.
func CopyFromPod(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, pod *corev1.Pod, container, srcPath, dstDir string) error {
	what := fmt.Sprintf("copy %s from container %q of pod %s/%s", srcPath, container, pod.Namespace, pod.Name)
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: container,
			Command:   []string{"tar", "cf", "-", "-C", srcPath, "."},
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	exec, err := newExecutor(cfg, req.URL())
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	stderr := &headBuffer{max: 4096}
	streamErr := make(chan error, 1)
	go func() {
		err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: pw, Stderr: stderr})
		pw.CloseWithError(err) // nil: the reader sees EOF
		streamErr <- err
	}()
	xerr := extractTar(pr, dstDir)
	if xerr == nil {
		_, _ = io.Copy(io.Discard, pr) // tar pads its output past the end-of-archive marker
	} else {
		cancel() // stop the stream; its writes fail from here on
		pr.CloseWithError(xerr)
	}
	serr := <-streamErr
	var code utilexec.CodeExitError
	if serr != nil && (strings.Contains(serr.Error(), "executable file not found") || errors.As(serr, &code) && code.Code == 127) {
		return fmt.Errorf("%s: the container has no tar; add tar to the image or copy the files another way", what)
	}
	err = xerr // when the stream failed first, xerr says so too
	if err == nil {
		err = serr
	}
	if err == nil {
		return nil
	}
	if s := firstLine(stderr.String()); s != "" {
		return fmt.Errorf("%s: %w (%s)", what, err, s)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// newExecutor prefers WebSockets and falls back to SPDY for API servers
// that do not upgrade, as kubectl does.
func newExecutor(cfg *rest.Config, u *url.URL) (remotecommand.Executor, error) {
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", u.String()) // RFC 6455 wants GET
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", u)
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

// extractTar writes a tar stream under dstDir; see CopyFromPod for what it
// accepts.
func extractTar(r io.Reader, dstDir string) error {
	if err := os.MkdirAll(dstDir, 0o700); err != nil {
		return err
	}
	root, err := os.OpenRoot(dstDir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read tar stream: %w", err)
		}
		name, err := archivePath(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue // srcPath itself
		}
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			if err := root.Chmod(name, mode|0o700); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeReg:
			if err := writeEntry(root, name, tr, mode|0o600); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeLink:
			src, err := archivePath(h.Linkname)
			if err != nil || src == "." {
				continue
			}
			f, err := root.Open(src)
			if err != nil {
				continue // a link to something not extracted
			}
			err = writeEntry(root, name, f, mode|0o600)
			f.Close()
			if err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		case tar.TypeSymlink:
			if !safeLinkTarget(h.Linkname) {
				continue
			}
			if err := prepareEntry(root, name); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("extract %s: %w", name, err)
			}
		}
	}
}

// archivePath cleans an entry name, refusing absolute ones and ".."
// elements: a well-formed `tar -C dir .` stream has neither.
func archivePath(name string) (string, error) {
	if path.IsAbs(name) || slices.Contains(strings.Split(name, "/"), "..") {
		return "", fmt.Errorf("unsafe path %q in tar stream", name)
	}
	return path.Clean(name), nil
}

// safeLinkTarget accepts relative targets without "..": resolved from
// anywhere under dstDir, they stay under it, even through other such links.
func safeLinkTarget(t string) bool {
	return t != "" && !path.IsAbs(t) && !slices.Contains(strings.Split(t, "/"), "..")
}

// prepareEntry creates name's parents and removes a non-directory already at
// name, so that a later entry replaces rather than writes through it.
func prepareEntry(root *os.Root, name string) error {
	if err := root.MkdirAll(path.Dir(name), 0o700); err != nil {
		return err
	}
	if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
		return root.Remove(name)
	}
	return nil
}

func writeEntry(root *os.Root, name string, r io.Reader, mode fs.FileMode) error {
	if err := prepareEntry(root, name); err != nil {
		return err
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil { // OpenFile's mode is subject to the umask
		f.Close()
		return err
	}
	return f.Close()
}

// headBuffer keeps the first max bytes written to it (tar's complaint comes
// first); the stream goroutine writes it, and it is read after that ends.
type headBuffer struct {
	max int
	b   []byte
}

func (t *headBuffer) Write(p []byte) (int, error) {
	if n := t.max - len(t.b); n > 0 {
		t.b = append(t.b, p[:min(n, len(p))]...)
	}
	return len(p), nil
}

func (t *headBuffer) String() string { return string(t.b) }

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
