package transfer

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// gate is a destination that takes bytes only while open.
type gate struct {
	mu   sync.Mutex
	cond sync.Cond
	open bool
	got  bytes.Buffer
	err  error
}

func newGate(open bool) *gate {
	g := &gate{open: open}
	g.cond.L = &g.mu
	return g
}

func (g *gate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.open {
		g.cond.Wait()
	}
	if g.err != nil {
		return 0, g.err
	}
	return g.got.Write(p)
}

func (g *gate) release() {
	g.mu.Lock()
	g.open = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *gate) bytes() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return bytes.Clone(g.got.Bytes())
}

func TestSpoolPassesEverythingInOrder(t *testing.T) {
	dir := t.TempDir()
	g := newGate(false) // the writer must not wait for the destination
	s, err := newSpool(dir, g)
	if err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := range 40 {
		p := benchRandom(100_000+i, uint64(i))
		if _, err := s.Write(p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p...)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the spool's file has a name: %v", ents)
	}
	g.release()
	if err := s.finish(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(g.bytes(), want) {
		t.Errorf("passed on %d bytes, want the %d written, in order", len(g.bytes()), len(want))
	}
}

// cut stops at a path boundary when Nix has not gone past it yet, and says
// so when it has.
func TestSpoolCut(t *testing.T) {
	whole, part := benchRandom(3*feedSize, 1), benchRandom(feedSize, 2)

	g := newGate(false)
	s, err := newSpool(t.TempDir(), g)
	if err != nil {
		t.Fatal(err)
	}
	s.Write(whole)
	at := s.offset()
	s.Write(part)
	go func() { time.Sleep(50 * time.Millisecond); g.release() }()
	if past := s.cut(at); past {
		t.Error("cut reports bytes past the boundary passed on; the destination was closed until the cut")
	}
	if got := g.bytes(); !bytes.Equal(got, whole) {
		t.Errorf("passed on %d bytes, want exactly the %d before the cut", len(got), len(whole))
	}

	g = newGate(true)
	s, err = newSpool(t.TempDir(), g)
	if err != nil {
		t.Fatal(err)
	}
	s.Write(whole)
	at = s.offset()
	s.Write(part)
	for deadline := time.Now().Add(5 * time.Second); len(g.bytes()) < len(whole)+len(part) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if past := s.cut(at); !past {
		t.Error("cut does not report the bytes past the boundary that the destination already took")
	}
}

// When the destination fails (nix-store died), writes fail with its error.
func TestSpoolDestinationError(t *testing.T) {
	g := newGate(true)
	boom := errors.New("nix-store --serve: error: disk full")
	g.err = boom
	s, err := newSpool(t.TempDir(), g)
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("first"))
	var werr error
	for deadline := time.Now().Add(5 * time.Second); werr == nil && time.Now().Before(deadline); {
		_, werr = s.Write([]byte("more"))
		time.Sleep(time.Millisecond)
	}
	if !errors.Is(werr, boom) {
		t.Errorf("Write = %v, want the destination's error", werr)
	}
	if err := s.finish(); !errors.Is(err, boom) {
		t.Errorf("finish = %v, want the destination's error", err)
	}
}

// A spool that cannot be made says where it would have gone and how to
// choose another place.
func TestSpoolUnwritableDir(t *testing.T) {
	_, err := newSpool("/nonexistent/nbship-test", newGate(true))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/nbship-test") || !strings.Contains(err.Error(), "TMPDIR") {
		t.Errorf("newSpool in a missing directory = %v, want an error naming it and TMPDIR", err)
	}
}
