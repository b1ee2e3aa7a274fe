package confine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		p, root string
		want    bool
	}{
		{"/srv/pxe", "/srv/pxe", true},
		{"/srv/pxe/a/b", "/srv/pxe", true},
		{"/srv/pxe2/a", "/srv/pxe", false},
		{"/srv", "/srv/pxe", false},
		{"/anything", "/", true},
	} {
		if got := Within(tc.p, tc.root); got != tc.want {
			t.Errorf("Within(%q, %q) = %v, want %v", tc.p, tc.root, got, tc.want)
		}
	}
}

func TestResolve(t *testing.T) {
	tree, outside := t.TempDir(), t.TempDir()
	must(t, os.WriteFile(filepath.Join(tree, "f"), []byte("f"), 0o644))
	must(t, os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600))
	must(t, os.Symlink("f", filepath.Join(tree, "in")))
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(tree, "out")))
	must(t, os.Symlink("out", filepath.Join(tree, "via")))
	roots := Roots(tree, filepath.Join(tree, "missing"))
	for _, tc := range []struct {
		name   string
		real   string
		inside bool
	}{
		{"f", filepath.Join(tree, "f"), true},
		{"in", filepath.Join(tree, "f"), true},
		{"out", filepath.Join(outside, "secret"), false},
		{"via", filepath.Join(outside, "secret"), false},
	} {
		real, inside, err := Resolve(filepath.Join(tree, tc.name), roots)
		if err != nil || real != tc.real || inside != tc.inside {
			t.Errorf("Resolve(%s) = %q, %v, %v; want %q, %v", tc.name, real, inside, err, tc.real, tc.inside)
		}
	}
}

// Both ways of opening refuse a path with a symlink anywhere in it, and
// open one without.
func TestOpenFollowsNoSymlink(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "d/f"), []byte("f"), 0o644))
	must(t, os.Symlink("d", filepath.Join(dir, "dl")))
	must(t, os.Symlink("f", filepath.Join(dir, "d/fl")))
	for name, open := range map[string]func(string, int) (*os.File, error){"Open": Open, "openChecked": openChecked} {
		for _, tc := range []struct {
			path string
			ok   bool
		}{
			{"d/f", true},
			{"dl/f", false}, // a directory on the way
			{"d/fl", false}, // the last component
		} {
			f, err := open(filepath.Join(dir, tc.path), 0)
			if err == nil {
				f.Close()
			}
			if (err == nil) != tc.ok || err != nil && !errors.Is(err, unix.ELOOP) {
				t.Errorf("%s(%s) = %v, want ok %v (else ELOOP)", name, tc.path, err, tc.ok)
			}
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
