package transfer

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// cutConn is one end of a connection that breaks after limit bytes were
// written through it, as a dropped link does.
type cutConn struct {
	net.Conn
	mu    sync.Mutex
	limit int
}

func (c *cutConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if len(p) > c.limit {
		c.mu.Unlock()
		c.Conn.Close()
		return 0, errors.New("link cut")
	}
	c.limit -= len(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// resumeFixture is a big incompressible file to send, in a directory of
// its own.
type resumeFixture struct {
	src  string // the directory sent
	data []byte
}

func newResumeFixture(t *testing.T, size int) *resumeFixture {
	t.Helper()
	f := &resumeFixture{src: t.TempDir(), data: make([]byte, size)}
	randRead(f.data)
	mkfile(t, filepath.Join(f.src, "sub", "initrd"), f.data, 0o444)
	mkfile(t, filepath.Join(f.src, "netboot.ipxe"), []byte("#!ipxe\n"), 0o644)
	return f
}

// attempt sends the fixture into a fresh staging directory whose sink
// keeps partial data when keep is set and resumes from dirs; cut > 0
// breaks the link after that many bytes. It returns the staging directory
// and both ends' results.
func (f *resumeFixture) attempt(t *testing.T, keep bool, dirs []string, cut int) (string, *Stats, *Stats, error, error) {
	t.Helper()
	src, sink, dir := fileAndSink(t, f.src)
	defer sink.Close()
	sink.Resume(keep, dirs)
	a, c := net.Pipe()
	var sendEnd net.Conn = a
	if cut > 0 {
		sendEnd = &cutConn{Conn: a, limit: cut}
	}
	sent, got, serr, rerr := pipeTrip(src, sink, zstdFastest, sendEnd, c, ReceiveOptions{})
	return dir, sent, got, serr, rerr
}

// cutAttempt is a first attempt cut at about 90% that keeps what arrived,
// and returns its staging directory and the length of the kept prefix.
func (f *resumeFixture) cutAttempt(t *testing.T) (string, int64) {
	t.Helper()
	dir, _, _, serr, rerr := f.attempt(t, true, nil, len(f.data)*9/10)
	if serr == nil || rerr == nil {
		t.Fatalf("a cut link: send %v, receive %v; want both to fail", serr, rerr)
	}
	st := readState(t, dir)
	if st.Length < int64(len(f.data))*8/10 || st.Size != int64(len(f.data)) || st.SHA256 != sha(f.data) {
		t.Fatalf("state after a cut at 90%% = %+v, want most of %d bytes of %s", st, len(f.data), sha(f.data))
	}
	kept, err := os.ReadFile(filepath.Join(dir, partialData))
	if err != nil || !bytes.Equal(kept, f.data[:st.Length]) {
		t.Fatalf("kept data: %d bytes (%v), want the first %d of the file", len(kept), err, st.Length)
	}
	if _, err := os.Stat(filepath.Join(dir, "sub", "initrd")); !os.IsNotExist(err) {
		t.Errorf("the partial file is still under its entry's name (%v): a reuse by hash would meet it", err)
	}
	return dir, st.Length
}

func readState(t *testing.T, dir string) *resumeState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, partialState))
	if err != nil {
		t.Fatalf("no state file: %v", err)
	}
	st, err := parseState(b)
	if err != nil {
		t.Fatalf("parseState(%s) = %v", b, err)
	}
	return st
}

// check asserts that a finished attempt landed the fixture exactly, with
// no resume files among it.
func (f *resumeFixture) check(t *testing.T, dir string, serr, rerr error) {
	t.Helper()
	if serr != nil || rerr != nil {
		t.Fatalf("retry: send %v, receive %v", serr, rerr)
	}
	got, err := os.ReadFile(filepath.Join(dir, "sub", "initrd"))
	if err != nil || !bytes.Equal(got, f.data) {
		t.Fatalf("landed file: %d bytes (%v), want the %d sent", len(got), err, len(f.data))
	}
	if fi, _ := os.Stat(filepath.Join(dir, "sub", "initrd")); fi.Mode().Perm() != 0o444 {
		t.Errorf("landed file mode %v, want 0444", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), `\`) {
			t.Errorf("resume file %q in the landed tree", e.Name())
		}
	}
}

func TestResumeFromAGoodPrefix(t *testing.T) {
	f := newResumeFixture(t, 8<<20)
	old, kept := f.cutAttempt(t)
	dir, sent, got, serr, rerr := f.attempt(t, false, []string{old}, 0)
	f.check(t, dir, serr, rerr)
	for _, s := range []*Stats{sent, got} {
		if s.Resumed != kept || s.Bytes != int64(len(f.data))-kept+int64(len("#!ipxe\n")) {
			t.Errorf("retry stats: resumed %d, bytes %d; want %d resumed and only the rest sent", s.Resumed, s.Bytes, kept)
		}
	}
	if sent.Compressed > int64(len(f.data))/4 {
		t.Errorf("retry put %d bytes on the link for a file of %d of which %d were kept", sent.Compressed, len(f.data), kept)
	}
}

// A retry keeping nothing (the last attempt) leaves no state behind; a
// kept prefix it does not use stays only in the old directory.
func TestResumeNotKeptWithoutKeepPartial(t *testing.T) {
	f := newResumeFixture(t, 4<<20)
	dir, _, _, serr, rerr := f.attempt(t, false, nil, len(f.data)/2)
	if serr == nil || rerr == nil {
		t.Fatalf("a cut link: send %v, receive %v", serr, rerr)
	}
	for _, n := range []string{partialData, partialState} {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s kept without keep-partial (%v)", n, err)
		}
	}
}

// Whatever was done to the kept files between attempts, the retry lands
// the right bytes: a changed prefix or a bad state is sent whole.
func TestResumeTamperedSendsWhole(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, dir string, kept int64)
	}{
		{"prefix byte flipped", func(t *testing.T, dir string, kept int64) {
			p := filepath.Join(dir, partialData)
			b, _ := os.ReadFile(p)
			b[kept/2] ^= 1
			os.WriteFile(p, b, 0o600)
		}},
		{"prefix shorter than its state", func(t *testing.T, dir string, kept int64) {
			os.Truncate(filepath.Join(dir, partialData), kept/2)
		}},
		{"state claims the whole file", func(t *testing.T, dir string, kept int64) {
			st := readState(t, dir)
			st.Length = st.Size
			b, _ := json.Marshal(st)
			os.WriteFile(filepath.Join(dir, partialState), b, 0o600)
		}},
		{"state longer than the file", func(t *testing.T, dir string, kept int64) {
			st := readState(t, dir)
			st.Length = kept + 1<<20
			b, _ := json.Marshal(st)
			os.WriteFile(filepath.Join(dir, partialState), b, 0o600)
		}},
		{"state of another file", func(t *testing.T, dir string, kept int64) {
			st := readState(t, dir)
			st.SHA256 = sha([]byte("another"))
			b, _ := json.Marshal(st)
			os.WriteFile(filepath.Join(dir, partialState), b, 0o600)
		}},
		{"state not JSON", func(t *testing.T, dir string, kept int64) {
			os.WriteFile(filepath.Join(dir, partialState), []byte("\x00garbage"), 0o600)
		}},
		{"prefix has another name", func(t *testing.T, dir string, kept int64) {
			other := filepath.Join(t.TempDir(), "published")
			if err := os.Link(filepath.Join(dir, partialData), other); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if fi, err := os.Stat(other); err != nil || fi.Size() != kept {
					t.Errorf("the other name's file was changed: %v, %v", fi, err)
				}
			})
		}},
		{"prefix is a symlink", func(t *testing.T, dir string, kept int64) {
			p := filepath.Join(dir, partialData)
			os.Rename(p, p+".real")
			os.Symlink(p+".real", p)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newResumeFixture(t, 4<<20)
			old, kept := f.cutAttempt(t)
			tc.tamper(t, old, kept)
			dir, sent, got, serr, rerr := f.attempt(t, false, []string{old}, 0)
			f.check(t, dir, serr, rerr)
			if sent.Resumed != 0 || got.Resumed != 0 || got.Bytes != int64(len(f.data))+int64(len("#!ipxe\n")) {
				t.Errorf("retry after %s: resumed %d/%d, bytes %d; want the whole file sent", tc.name, sent.Resumed, got.Resumed, got.Bytes)
			}
		})
	}
}

// A retry that is cut again keeps the longer prefix, and the third
// attempt continues from it.
func TestResumeTwice(t *testing.T) {
	f := newResumeFixture(t, 8<<20)
	old, kept := f.cutAttempt(t)
	// The second attempt sends from kept on; cut it after half the rest.
	second, _, _, serr, rerr := f.attempt(t, true, []string{old}, (len(f.data)-int(kept))/2)
	if serr == nil || rerr == nil {
		t.Fatalf("second attempt over a cut link: send %v, receive %v", serr, rerr)
	}
	st := readState(t, second)
	if st.Length <= kept {
		t.Fatalf("second attempt kept %d bytes, want more than the first's %d", st.Length, kept)
	}
	dir, _, got, serr, rerr := f.attempt(t, false, []string{old, second}, 0)
	f.check(t, dir, serr, rerr)
	if got.Resumed != st.Length {
		t.Errorf("third attempt resumed %d bytes, want the longer prefix's %d", got.Resumed, st.Length)
	}
}

func TestParseWantRefusesBadOffers(t *testing.T) {
	m := &Manifest{Entries: []Entry{
		{Name: "d", Type: TypeDir},
		{Name: "a", Type: TypeFile, Size: 100},
		{Name: "b", Type: TypeFile, Size: 100},
		{Name: "/nix/store/x", Type: TypeNAR, Size: 100},
	}}
	bitmap := []byte{0b1110}
	good := offer{index: 1, length: 50}
	for _, tc := range []struct {
		name   string
		offers []offer
		ok     bool
	}{
		{"none", nil, true},
		{"one", []offer{good}, true},
		{"two in order", []offer{good, {index: 2, length: 99}}, true},
		{"out of order", []offer{{index: 2, length: 1}, good}, false},
		{"twice", []offer{good, good}, false},
		{"a directory", []offer{{index: 0, length: 1}}, false},
		{"a NAR (version 5)", []offer{good, {index: 3, length: 1}}, true},
		{"the whole NAR", []offer{{index: 3, length: 100}}, false},
		{"past the entries", []offer{{index: 4, length: 1}}, false},
		{"the whole file", []offer{{index: 1, length: 100}}, false},
		{"empty", []offer{{index: 1, length: 0}}, false},
		{"negative", []offer{{index: 1, length: -1}}, false},
	} {
		_, got, err := parseWant(appendOffers(bytes.Clone(bitmap), tc.offers), m)
		if (err == nil) != tc.ok || (tc.ok && len(got) != len(tc.offers)) {
			t.Errorf("parseWant(%s) = %v, %v; want ok %v", tc.name, got, err, tc.ok)
		}
	}
	if _, _, err := parseWant(appendOffers([]byte{0b1010}, []offer{{index: 2, length: 1}}), m); err == nil {
		t.Errorf("parseWant accepted an offer of an entry not wanted")
	}
	if _, _, err := parseWant(append(bytes.Clone(bitmap), 1, 2, 3), m); err == nil {
		t.Errorf("parseWant accepted a torn offer")
	}
}

func FuzzParseWant(f *testing.F) {
	f.Add(appendOffers([]byte{0b110}, []offer{{index: 1, length: 50}}))
	f.Add(appendOffers([]byte{0b1110}, []offer{{index: 1, length: 50}, {index: 3, length: 7}}))
	f.Add([]byte{0b110})
	f.Add([]byte{})
	m := &Manifest{Entries: []Entry{
		{Name: "d", Type: TypeDir},
		{Name: "a", Type: TypeFile, Size: 100},
		{Name: "b", Type: TypeFile, Size: 1 << 40},
		{Name: leafName, Type: TypeNAR, Size: 1 << 30},
	}}
	f.Fuzz(func(t *testing.T, p []byte) {
		bitmap, offers, err := parseWant(p, m)
		if err != nil {
			return
		}
		if len(bitmap) != 1 {
			t.Fatalf("bitmap of %d bytes for 4 entries", len(bitmap))
		}
		for _, o := range offers {
			e := m.Entries[o.index]
			if !e.hasData() || o.length <= 0 || o.length >= e.Size || !wanted(bitmap, o.index) {
				t.Fatalf("accepted offer %+v of %+v", o, e)
			}
		}
	})
}

func FuzzParseState(f *testing.F) {
	good, _ := json.Marshal(resumeState{Version: partialVersion, Size: 100, SHA256: sha(nil), Length: 50})
	f.Add(good)
	nar, _ := json.Marshal(resumeState{Version: partialVersion, Name: leafName, Size: 100, SHA256: sha(nil), Length: 50})
	f.Add(nar)
	f.Add([]byte(`{"version":1,"size":100,"sha256":"","length":50}`))
	f.Add([]byte(`{"version":1,"size":10,"sha256":"` + sha(nil) + `","length":50}`))
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		if st.Length <= 0 || st.Length >= st.Size || len(st.SHA256) != 64 {
			t.Fatalf("parseState(%q) accepted %+v", b, st)
		}
	})
}
