package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nbship/nbship/nixstore"
)

// narFixture is a store with one big incompressible path, and the TMPDIR
// its receivers keep NARs in.
type narFixture struct {
	src  *fakeStore
	nar  []byte
	tmp  string
	path string
}

func newNARFixture(t *testing.T) *narFixture {
	t.Helper()
	old := narKeepMin
	narKeepMin = 1 << 10
	t.Cleanup(func() { narKeepMin = old })
	content := make([]byte, 2<<20)
	randRead(content)
	src := newFakeStore()
	src.add(leafName, string(content), nil, "")
	return &narFixture{src: src, nar: src.paths[leafName].nar, tmp: t.TempDir(), path: nixstore.Dir + "/" + leafName}
}

// attempt ships the path into dst through a sink that keeps NARs with
// keep; cut > 0 breaks the link after that many bytes.
func (f *narFixture) attempt(t *testing.T, dst *fakeStore, keep bool, cut int) (*Stats, error, error) {
	t.Helper()
	ctx := context.Background()
	s, err := CollectStore(ctx, f.src, []string{f.path})
	if err != nil {
		t.Fatal(err)
	}
	sink := NewStoreSink(dst)
	if err := sink.Resume(keep, f.tmp); err != nil {
		t.Fatal(err)
	}
	a, c := net.Pipe()
	var sendEnd net.Conn = a
	if cut > 0 {
		sendEnd = &cutConn{Conn: a, limit: cut}
	}
	sent, _, serr, rerr := pipeTrip(s, sink, zstdFastest, sendEnd, c, ReceiveOptions{Commit: func() (string, error) { return "", sink.Confirm(ctx) }})
	if cerr := sink.Close(); rerr == nil {
		rerr = cerr
	}
	return sent, serr, rerr
}

// cut is a first attempt cut at about 90% that keeps what arrived; it
// returns the directory kept and its state.
func (f *narFixture) cut(t *testing.T) (string, *resumeState) {
	t.Helper()
	dst := newFakeStore()
	_, serr, rerr := f.attempt(t, dst, true, len(f.nar)*9/10)
	if serr == nil || rerr == nil {
		t.Fatalf("a cut link: send %v, receive %v; want both to fail", serr, rerr)
	}
	if dst.paths[leafName] != nil {
		t.Fatal("a NAR cut short was imported")
	}
	dirs, _ := filepath.Glob(filepath.Join(f.tmp, narPrefix+"*"))
	if len(dirs) != 1 {
		t.Fatalf("kept directories %v, want one", dirs)
	}
	st := readState(t, dirs[0])
	if st.Name != leafName || st.Size != int64(len(f.nar)) || st.SHA256 != sha(f.nar) || st.Length < int64(len(f.nar))*7/10 {
		t.Fatalf("state after a cut at 90%% = %+v, want most of %s's %d bytes", st, leafName, len(f.nar))
	}
	kept, err := os.ReadFile(filepath.Join(dirs[0], partialData))
	if err != nil || !bytes.Equal(kept, f.nar[:st.Length]) {
		t.Fatalf("kept data: %d bytes (%v), want the NAR's first %d", len(kept), err, st.Length)
	}
	return dirs[0], st
}

// retry is the last attempt: it must import the path exactly and leave
// nothing in TMPDIR; it returns what the sender sent.
func (f *narFixture) retry(t *testing.T) *Stats {
	t.Helper()
	dst := newFakeStore()
	sent, serr, rerr := f.attempt(t, dst, false, 0)
	if serr != nil || rerr != nil {
		t.Fatalf("retry: send %v, receive %v", serr, rerr)
	}
	if p := dst.paths[leafName]; p == nil || !bytes.Equal(p.nar, f.nar) {
		t.Fatal("the retry did not import the NAR sent")
	}
	if ents, _ := os.ReadDir(f.tmp); len(ents) != 0 {
		t.Errorf("the last attempt left %v in TMPDIR", ents)
	}
	return sent
}

func TestNARResumeFromAGoodPrefix(t *testing.T) {
	f := newNARFixture(t)
	_, st := f.cut(t)
	sent := f.retry(t)
	if sent.Resumed != st.Length || sent.Bytes != int64(len(f.nar))-st.Length {
		t.Errorf("retry sent %d bytes, resumed %d; want %d and %d", sent.Bytes, sent.Resumed, int64(len(f.nar))-st.Length, st.Length)
	}
	if len(f.src.dumped) != 2 {
		t.Errorf("dumps %v: a matching prefix needs no second session", f.src.dumped)
	}
}

func TestNARResumeTamperedPrefixSendsWhole(t *testing.T) {
	f := newNARFixture(t)
	dir, st := f.cut(t)
	data := filepath.Join(dir, partialData)
	b, _ := os.ReadFile(data)
	b[st.Length/2] ^= 1
	if err := os.WriteFile(data, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sent := f.retry(t)
	if sent.Resumed != 0 || sent.Bytes != int64(len(f.nar)) {
		t.Errorf("retry after tampering sent %d bytes, resumed %d; want the whole %d", sent.Bytes, sent.Resumed, len(f.nar))
	}
	// The prefix, already read off the dump, came again from a session of
	// its own.
	if len(f.src.dumped) != 3 {
		t.Errorf("dumps %v, want the cut one, the retry's and the prefix's", f.src.dumped)
	}
}

func TestNARResumeStateOfAnotherPath(t *testing.T) {
	f := newNARFixture(t)
	dir, st := f.cut(t)
	st.Name = midName
	b, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(dir, partialState), b, 0o600); err != nil {
		t.Fatal(err)
	}
	sent := f.retry(t)
	if sent.Resumed != 0 || sent.Bytes != int64(len(f.nar)) {
		t.Errorf("retry with another path's state sent %d bytes, resumed %d; want the whole %d", sent.Bytes, sent.Resumed, len(f.nar))
	}
}

// A retry that keeps (not the last) and succeeds leaves nothing either; one
// that fails again keeps the longer prefix, appended to the first.
func TestNARResumeTwice(t *testing.T) {
	f := newNARFixture(t)
	_, st := f.cut(t)
	_, serr, rerr := f.attempt(t, newFakeStore(), true, int(int64(len(f.nar))-st.Length)/2)
	if serr == nil || rerr == nil {
		t.Fatalf("second cut: send %v, receive %v; want both to fail", serr, rerr)
	}
	dirs, _ := filepath.Glob(filepath.Join(f.tmp, narPrefix+"*"))
	if len(dirs) != 1 {
		t.Fatalf("after two cuts: %v, want one kept directory (the first's prefix moved on)", dirs)
	}
	st2 := readState(t, dirs[0])
	if st2.Length <= st.Length {
		t.Fatalf("second cut kept %d bytes, the first %d: want more", st2.Length, st.Length)
	}
	sent := f.retry(t)
	if sent.Resumed != st2.Length {
		t.Errorf("third attempt resumed %d bytes, want %d", sent.Resumed, st2.Length)
	}
}

// A directory a live receiver holds is neither offered nor removed.
func TestNARResumeLeavesALiveReceiversDirectory(t *testing.T) {
	f := newNARFixture(t)
	dir, _ := f.cut(t)
	lock, ok := lockLeftover(dir)
	if !ok {
		t.Fatal("could not lock the kept directory")
	}
	sent, serr, rerr := f.attempt(t, newFakeStore(), false, 0)
	lock.Close()
	if serr != nil || rerr != nil || sent.Resumed != 0 {
		t.Fatalf("send %v, receive %v, resumed %d; want a whole send", serr, rerr, sent.Resumed)
	}
	if _, err := os.Stat(filepath.Join(dir, partialData)); err != nil {
		t.Errorf("a held directory was touched: %v", err)
	}
}

// slowImports is a store whose Nix takes its input slowly.
type slowImports struct{ *fakeStore }

func (s slowImports) Import(ctx context.Context) (Importer, error) {
	imp, err := s.fakeStore.Import(ctx)
	return slowImporter{imp}, err
}

type slowImporter struct{ Importer }

func (s slowImporter) Write(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	return s.Importer.Write(p)
}

// While the receiver gives Nix the kept start of a NAR it reads nothing;
// it says it is busy meanwhile, and the sender takes that for what it is.
func TestNARResumeSaysBusyWhileNixTakesThePrefix(t *testing.T) {
	f := newNARFixture(t)
	_, st := f.cut(t)
	old, lag := busyEvery, maxLag
	busyEvery, maxLag = time.Millisecond, 64<<10 // the prefix waits for Nix
	t.Cleanup(func() { busyEvery, maxLag = old, lag })
	ctx := context.Background()
	s, err := CollectStore(ctx, f.src, []string{f.path})
	if err != nil {
		t.Fatal(err)
	}
	dst := newFakeStore()
	sink := NewStoreSink(slowImports{dst})
	sink.Resume(false, f.tmp)
	a, c := net.Pipe()
	w := &busyAfterWant{Conn: c}
	sent, _, serr, rerr := pipeTrip(s, sink, zstdFastest, a, w, ReceiveOptions{Commit: func() (string, error) { return "", sink.Confirm(ctx) }})
	if cerr := sink.Close(); rerr == nil {
		rerr = cerr
	}
	if serr != nil || rerr != nil {
		t.Fatalf("send %v, receive %v", serr, rerr)
	}
	if w.busy.Load() == 0 {
		t.Error("the receiver never said it was busy while Nix took the prefix")
	}
	if sent.Resumed != st.Length || dst.paths[leafName] == nil {
		t.Errorf("resumed %d of the kept %d bytes, imported %v", sent.Resumed, st.Length, dst.paths[leafName] != nil)
	}
}

// busyAfterWant is the receiver's end of the connection: it counts the
// busy messages written after the want.
type busyAfterWant struct {
	net.Conn
	wanted bool
	busy   atomic.Int64
}

func (b *busyAfterWant) Write(p []byte) (int, error) {
	switch {
	case len(p) > 0 && p[0] == msgWant:
		b.wanted = true
	case len(p) == 5 && p[0] == msgBusy && b.wanted:
		b.busy.Add(1)
	}
	return b.Conn.Write(p)
}

// A last attempt whose receiver never got a stream (the sender could not
// reach it, and the controller fell back to another path) leaves the kept
// prefix for the receiver that will.
func TestNARResumeSurvivesAReceiverWithoutAStream(t *testing.T) {
	f := newNARFixture(t)
	_, st := f.cut(t)
	idle := NewStoreSink(newFakeStore())
	if err := idle.Resume(false, f.tmp); err != nil {
		t.Fatal(err)
	}
	idle.Close()
	if sent := f.retry(t); sent.Resumed != st.Length {
		t.Errorf("after a receiver without a stream, the retry resumed %d bytes, want %d", sent.Resumed, st.Length)
	}
}

// SweepKeptNARs removes what failed attempts kept, but not a directory a
// live receiver holds.
func TestSweepKeptNARs(t *testing.T) {
	f := newNARFixture(t)
	dir, _ := f.cut(t)
	live := NewStoreSink(newFakeStore())
	if err := live.Resume(true, f.tmp); err != nil {
		t.Fatal(err)
	}
	held := live.keep.own.Path
	for _, l := range live.keep.left { // it holds only its own
		l.lock.Close()
	}
	live.keep.left = nil
	removed := SweepKeptNARs(f.tmp)
	if len(removed) != 1 || removed[0] != dir {
		t.Errorf("swept %v, want just %s", removed, dir)
	}
	if _, err := os.Stat(held); err != nil {
		t.Errorf("a live receiver's directory was swept: %v", err)
	}
	live.Close()
}
