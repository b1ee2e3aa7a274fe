package image

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

func TestLeftoversOfAReleasedStagingAreReused(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	staged, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	kernel := []byte("a kernel that arrived before the link dropped")
	if err := os.WriteFile(filepath.Join(staged, "Image"), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	// The start of a file cut off, kept for a retry to continue
	// (transfer's resume files): no whole file to reuse.
	partial := []byte("the start of an initrd")
	if err := os.WriteFile(filepath.Join(staged, `.nbship\partial`), partial, 0o600); err != nil {
		t.Fatal(err)
	}
	// While this attempt holds the staging, it is not anyone's leftover.
	have := map[[32]byte]string{}
	if err := s.Leftovers(have); err != nil || len(have) != 0 {
		t.Fatalf("Leftovers of a held staging = %v, %v, want none", have, err)
	}
	if err := s.Release(staged); err != nil {
		t.Fatal(err)
	}
	if err := s.Leftovers(have); err != nil {
		t.Fatal(err)
	}
	if p, ok := have[sha256.Sum256(kernel)]; !ok || p != filepath.Join(staged, "Image") || len(have) != 1 {
		t.Errorf("Leftovers = %v, want the released staging's Image only", have)
	}
	if dirs, err := s.LeftoverDirs(); err != nil || len(dirs) != 1 || dirs[0] != staged {
		t.Errorf("LeftoverDirs = %v, %v; want [%s]", dirs, err, staged)
	}
	// The next cleanup removes it.
	if _, err := s.GC(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("released staging survived GC: %v", err)
	}
}
