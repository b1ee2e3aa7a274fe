package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// stallWriter passes the first after bytes written through, then blocks
// every write until release is closed.
type stallWriter struct {
	io.ReadWriter
	after   int64
	n       int64
	release chan struct{}
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.n >= w.after {
		<-w.release
	}
	n, err := w.ReadWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// stalledRecv starts `recv --dest dest` and sends it src's files from this
// process, stopping mid-stream: it returns once the receiver's staging
// directory beside dest (not one of others) holds part of a file. Closing release lets the
// stream go on; sent then reports how the sending ended.
func stalledRecv(t *testing.T, bin, dest, src string, others ...string) (r *proc, staging string, release func(), sent <-chan error) {
	t.Helper()
	id, err := tunnel.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	r = start(t, bin, "recv", "--listen", "127.0.0.1:0", "--dest", dest, "--peer-pin", id.Pin(), "--accept-timeout", "30s")
	rpin := strings.TrimPrefix(r.line(t), "fingerprint ")
	addr, _ := strings.CutPrefix(r.line(t), "listening ")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := tunnel.DialLanes(ctx, addr, id, rpin, tunnel.LaneOptions{})
	if err != nil {
		t.Fatalf("dialing recv: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := transfer.Collect(ctx, []string{src})
	if err != nil {
		t.Fatal(err)
	}
	w := &stallWriter{ReadWriter: c, after: 12 << 20, release: make(chan struct{})}
	var once sync.Once
	release = func() { once.Do(func() { close(w.release) }) }
	t.Cleanup(release)
	done := make(chan error, 1)
	go func() {
		_, err := transfer.Send(ctx, w, s, transfer.SendOptions{})
		done <- err
	}()
	pattern := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+".nbship-recv-*")
	for deadline := time.Now().Add(30 * time.Second); ; {
		dirs, _ := filepath.Glob(pattern)
		for _, d := range dirs {
			if slices.Contains(others, d) {
				continue
			}
			if fi, err := os.Stat(filepath.Join(d, "big")); err == nil && fi.Size() > 0 {
				return r, d, release, done
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no staging directory %s with data in it after 30s (have %q; recv stderr: %s)", pattern, dirs, r.stderr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A receiver SIGKILLed mid-stream leaves its staging directory (unverified
// data) beside dest; the next receiver for dest removes it, but never the
// staging of a receiver that is still alive.
func TestRecvSweepsOnlyDeadStaging(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "big"), randomBytes(t, 32<<20), 0o600)

	// A receiver that lives on through all this, stalled mid-stream.
	liveRecv, live, release, sent := stalledRecv(t, bin, dest, src)

	killed, dead, _, _ := stalledRecv(t, bin, dest, src, live)
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("the live receiver's staging %s after another receiver started: %v, want it left alone", live, err)
	}
	killed.cmd.Process.Signal(syscall.SIGKILL)
	killed.wait(t)
	if _, err := os.Stat(dead); err != nil {
		t.Fatalf("the killed receiver's staging %s: %v; want it left behind, as SIGKILL leaves it", dead, err)
	}

	small := t.TempDir()
	writeFile(t, filepath.Join(small, "Image"), []byte("kernel"), 0o644)
	recv, sender := loopback(t, dest, nil, nil, small)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("the killed receiver's staging %s after the next recv: %v, want it removed", dead, err)
	}
	if !strings.Contains(recv.stderr, "removed "+dead) {
		t.Errorf("recv stderr = %q, want it to say it removed %s", recv.stderr, dead)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("the live receiver's staging %s after the next recv: %v, want it left alone", live, err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "Image")); err != nil || string(b) != "kernel" {
		t.Errorf("dest/Image = %q, %v; want kernel", b, err)
	}

	// The live one goes on to the end, finds dest taken, and cleans up.
	release()
	<-sent
	if _, err := liveRecv.wait(t); err == nil {
		t.Errorf("the second receiver put its files at an occupied dest")
	}
	assertNoLeftovers(t, parent, "out")
}
