package staging

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A directory Make returns is live until released; Sweep removes only the
// dead ones, and creating ones only once they are old.
func TestSweepRemovesOnlyDeadStaging(t *testing.T) {
	parent := t.TempDir()
	held, err := Make(parent, ".new-", ".recv-")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	released, err := Make(parent, ".new-", ".recv-")
	if err != nil {
		t.Fatal(err)
	}
	released.Release()
	released.Release() // twice is harmless
	if Stale(held.Path) || !Stale(released.Path) {
		t.Fatalf("Stale(held), Stale(released) = %v, %v; want false, true", Stale(held.Path), Stale(released.Path))
	}
	freshNew, oldNew, other := filepath.Join(parent, ".new-1"), filepath.Join(parent, ".new-2"), filepath.Join(parent, "other")
	for _, d := range []string{freshNew, oldNew, other} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * StaleAge)
	os.Chtimes(oldNew, old, old)
	os.Chtimes(held.Path, old, old) // age does not matter to a held one

	removed := Sweep(parent, ".new-", ".recv-")
	slices.Sort(removed)
	want := []string{oldNew, released.Path}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("Sweep removed %q, want %q", removed, want)
	}
	for _, d := range []string{held.Path, freshNew, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s after Sweep: %v, want it kept", d, err)
		}
	}
}

// failingReader gives some bytes, then an error.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("disk on fire")
	}
	k := min(len(p), f.n)
	f.n -= k
	return k, nil
}

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	exists := filepath.Join(dir, "exists")
	if err := os.WriteFile(exists, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dst  string
		r    io.Reader
		ok   bool
		left string // dst's content after; "-": no dst
	}{
		{"new file", filepath.Join(dir, "a"), strings.NewReader("hello"), true, "hello"},
		{"empty", filepath.Join(dir, "b"), strings.NewReader(""), true, ""},
		{"reader fails", filepath.Join(dir, "c"), &failingReader{n: 10}, false, "-"},
		{"dst exists", exists, strings.NewReader("new"), false, "old"},
	} {
		n, err := CopyFile(tc.dst, tc.r, 0o640)
		if (err == nil) != tc.ok || tc.ok && n != int64(len(tc.left)) {
			t.Errorf("CopyFile(%s) = %d, %v; want ok %v", tc.name, n, err, tc.ok)
		}
		got, rerr := os.ReadFile(tc.dst)
		if rerr != nil {
			got = []byte("-")
		}
		if string(got) != tc.left {
			t.Errorf("CopyFile(%s) left %q, want %q", tc.name, got, tc.left)
		}
		if fi, err := os.Stat(tc.dst); tc.ok && err == nil && fi.Mode().Perm()&^0o640 != 0 {
			t.Errorf("CopyFile(%s) made mode %v, want at most 0640", tc.name, fi.Mode())
		}
	}
}
