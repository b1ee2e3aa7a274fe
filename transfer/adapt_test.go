package transfer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// shapedConn is one end of an in-memory connection behind a link of rate
// bytes per second (0: as fast as the peer reads), with a send queue of at
// most limit bytes that empties at that rate; Unacked reports the queue as
// tunnel.Conn does a socket's.
type shapedConn struct {
	io.ReadWriteCloser
	rate  float64
	limit float64

	mu     sync.Mutex
	queued float64
	last   time.Time
}

func (s *shapedConn) drained() float64 {
	now := time.Now()
	if s.rate == 0 {
		s.queued = 0
	} else if !s.last.IsZero() {
		s.queued = max(0, s.queued-s.rate*now.Sub(s.last).Seconds())
	}
	s.last = now
	return s.queued
}

func (s *shapedConn) Write(p []byte) (int, error) {
	s.mu.Lock()
	for s.drained() > s.limit {
		s.mu.Unlock()
		time.Sleep(time.Millisecond)
		s.mu.Lock()
	}
	s.queued += float64(len(p))
	s.mu.Unlock()
	return s.ReadWriteCloser.Write(p)
}

func (s *shapedConn) Unacked() (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.drained()), true
}

// wordyFile writes size bytes of Go-like lines from a small set: zstd
// shrinks it several times over.
func wordyFile(t *testing.T, size int) string {
	t.Helper()
	lines := []string{"\tif err != nil {\n\t\treturn err\n\t}\n", "\tfor i := range buf {\n", "\tn += int64(k) // the link\n", "}\n\n", "func (w *writer) Write(p []byte) (int, error) {\n", "\tx := buf[%d]\n"}
	r := rand.New(rand.NewPCG(1, 2))
	var b bytes.Buffer
	for b.Len() < size {
		l := lines[r.IntN(len(lines))]
		if strings.Contains(l, "%d") {
			l = fmt.Sprintf(l, r.IntN(1000))
		}
		b.WriteString(l)
	}
	p := filepath.Join(t.TempDir(), "kernel")
	if err := os.WriteFile(p, b.Bytes()[:size], 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// shipOver sends file through conn (wrapped around one end of a pipe) and
// checks it arrived whole; it returns the sender's stats.
func shipOver(t *testing.T, file string, level zstd.EncoderLevel, wrap func(io.ReadWriteCloser) io.ReadWriteCloser) *Stats {
	t.Helper()
	src, err := Collect(context.Background(), []string{file})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sink, err := NewDirSink(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	a, c := net.Pipe()
	sent, _, serr, rerr := pipeTrip(src, sink, level, wrap(a), c, ReceiveOptions{})
	if serr != nil || rerr != nil {
		t.Fatalf("send: %v; receive: %v", serr, rerr)
	}
	want, _ := os.ReadFile(file)
	got, err := os.ReadFile(filepath.Join(dir, filepath.Base(file)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the file did not arrive whole (%d of %d bytes, %v)", len(got), len(want), err)
	}
	return sent
}

const adaptFile = 12 << 20

// On a link faster than the compressor, a big compressible file goes
// stored once a probe has shown that: all of it but the compressed lead-in
// and probe.
func TestAdaptFastLinkSendsStored(t *testing.T) {
	f := wordyFile(t, adaptFile)
	// The slowest level makes the compressed probe take many times what
	// the stored one does, whatever else the machine is doing.
	st := shipOver(t, f, zstd.SpeedBestCompression, func(c io.ReadWriteCloser) io.ReadWriteCloser {
		return &shapedConn{ReadWriteCloser: c}
	})
	if want := int64(adaptFile - leadIn - probeSize); st.Stored != want {
		t.Fatalf("stored %d of %d bytes; want all but the compressed lead-in and probe (%d)", st.Stored, st.Bytes, want)
	}
}

// On a link slower than the compressor the file goes compressed: at most
// one probe's worth stored (when the compressed probe's bytes happened to
// drain before the compressor was done, the stored probe shows the link
// is slower).
func TestAdaptSlowLinkCompresses(t *testing.T) {
	f := wordyFile(t, adaptFile)
	st := shipOver(t, f, zstd.SpeedDefault, func(c io.ReadWriteCloser) io.ReadWriteCloser {
		return &shapedConn{ReadWriteCloser: c, rate: 2 << 20, limit: 256 << 10}
	})
	if st.Stored > rawProbe {
		t.Fatalf("stored %d bytes over a 2 MB/s link; want at most one probe (%d)", st.Stored, rawProbe)
	}
	if st.Compressed > st.Bytes/4 {
		t.Fatalf("%d bytes on the wire for %d of text: not compressed", st.Compressed, st.Bytes)
	}
}

// A connection that cannot report its queue (an SSH session's stdio) gets
// today's behaviour: compressible files compressed, all of them.
func TestAdaptBlindLinkCompresses(t *testing.T) {
	f := wordyFile(t, adaptFile)
	st := shipOver(t, f, zstd.SpeedFastest, func(c io.ReadWriteCloser) io.ReadWriteCloser { return c })
	if st.Stored != 0 {
		t.Fatalf("stored %d bytes over a connection that reports no queue; want 0", st.Stored)
	}
}

// When the link changes under a long transfer, the next probe notices: a
// link that was fast and then slows down gets compressed stretches again.
func TestAdaptReprobesEveryStretch(t *testing.T) {
	defer func(s int64) { stretch = s }(stretch)
	stretch = 4 << 20
	f := wordyFile(t, int(3*stretch))
	var sent atomic.Int64
	st := shipOver(t, f, zstd.SpeedBestCompression, func(c io.ReadWriteCloser) io.ReadWriteCloser {
		sc := &shapedConn{ReadWriteCloser: c, limit: 256 << 10}
		return writeHook{sc, func(n int) {
			// Once the first stretch is out, the link slows to 2 MB/s.
			if sent.Add(int64(n)) > stretch && sc.rate == 0 {
				sc.rate, sc.last = 2<<20, time.Now()
			}
		}}
	})
	// Stored: the first probe's stored half, the first stretch, and the
	// second probe's stored half unless the compressed half alone showed
	// the link was now the bottleneck; the rest compressed.
	if lo, hi := stretch+rawProbe, stretch+2*rawProbe; st.Stored < lo || st.Stored > hi {
		t.Fatalf("stored %d of %d bytes; want the first stretch and its probe, at most one more probe (%d..%d)", st.Stored, st.Bytes, lo, hi)
	}
}

// writeHook calls hook after every write, under the link's lock.
type writeHook struct {
	*shapedConn
	hook func(int)
}

func (w writeHook) Write(p []byte) (int, error) {
	n, err := w.shapedConn.Write(p)
	w.mu.Lock()
	w.hook(n)
	w.mu.Unlock()
	return n, err
}
