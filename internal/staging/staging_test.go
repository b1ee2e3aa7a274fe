package staging

import (
	"os"
	"path/filepath"
	"slices"
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
