package image

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Boot describes what the slot serves now: the current generation's
// kernel and initrd with their hashes, and the kernel line's arguments.
func TestBoot(t *testing.T) {
	s := openSlot(t, t.TempDir(), x86)
	if _, err := s.Boot(); err == nil || !strings.Contains(err.Error(), "serves no generation") {
		t.Errorf("Boot() of an empty slot = %v, want an error saying it serves nothing", err)
	}
	publish(t, s, "one", 0)
	g := publish(t, s, "two", 0)
	b, err := s.Boot()
	if err != nil {
		t.Fatal(err)
	}
	if b.Generation != g.Name || b.System != X86_64 || b.Dir != g.Dir || b.KernelLine != 3 {
		t.Errorf("Boot() = %+v, want generation %s in %s, %s, kernel line 3", b, g.Name, g.Dir, X86_64)
	}
	want := "init=/nix/store/x-nixos-system/init initrd=initrd loglevel=4 ${cmdline}"
	if got := strings.Join(b.Args, " "); got != want {
		t.Errorf("Boot().Args = %q, want %q", got, want)
	}
	for _, f := range append([]BootFile{b.Kernel}, b.Initrds...) {
		data, err := os.ReadFile(filepath.Join(g.Dir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if f.Size != int64(len(data)) || f.SHA256 != hex.EncodeToString(sum[:]) || tagOf(data) != "two" {
			t.Errorf("Boot() file %+v, want %d bytes, SHA-256 %x, of generation two", f, len(data), sum)
		}
	}
	if b.Kernel.Name != "bzImage" || len(b.Initrds) != 1 || b.Initrds[0].Name != InitrdName {
		t.Errorf("Boot() = kernel %s, initrds %v; want bzImage, [initrd]", b.Kernel.Name, b.Initrds)
	}

	// A file changed after publishing no longer matches the hash file.
	if err := os.WriteFile(filepath.Join(g.Dir, InitrdName), []byte("\x1f\x8b changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Boot(); err == nil || !strings.Contains(err.Error(), "changed since it was published") {
		t.Errorf("Boot() after the initrd changed = %v, want it refused", err)
	}
}
