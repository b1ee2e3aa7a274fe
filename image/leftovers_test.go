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
	if p, ok := have[sha256.Sum256(kernel)]; !ok || p != filepath.Join(staged, "Image") {
		t.Errorf("Leftovers = %v, want the released staging's Image", have)
	}
	// The next cleanup removes it.
	if _, err := s.GC(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Errorf("released staging survived GC: %v", err)
	}
}
