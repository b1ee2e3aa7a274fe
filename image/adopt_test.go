package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// oldScriptsDir makes the slot a plain directory, as the old scripts' mv
// rotation left it.
func oldScriptsDir(t *testing.T, s *Slot, tag string) time.Time {
	t.Helper()
	if err := os.Mkdir(s.Path(), 0o755); err != nil {
		t.Fatal(err)
	}
	writeImage(t, s.Path(), s.Profile(), tag)
	mtime := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	os.Chtimes(s.Path(), mtime, mtime)
	return mtime
}

// hammer reads PXEDIR/hydra-X/netboot.ipxe until stopped and counts failures.
func hammer(s *Slot) (stop func() (reads, fails int64, first string)) {
	done := make(chan struct{})
	var r, f atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := os.ReadFile(filepath.Join(s.Path(), ScriptName)); err != nil {
				f.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
			r.Add(1)
		}
	}()
	return func() (int64, int64, string) {
		close(done)
		wg.Wait()
		first, _ := firstErr.Load().(string)
		return r.Load(), f.Load(), first
	}
}

func TestAdoptPlainDir(t *testing.T) {
	pxe := t.TempDir()
	s := openSlot(t, pxe, arm)
	mtime := oldScriptsDir(t, s, "old")

	stop := hammer(s)
	time.Sleep(5 * time.Millisecond)
	g := publish(t, s, "new", 3)
	reads, fails, first := stop()
	if fails != 0 {
		t.Errorf("%d of %d reads through the slot failed while it was adopted (first: %s)", fails, reads, first)
	}
	gens := list(t, s)
	if len(gens) != 2 || gens[0].Name != g.Name || !gens[0].Current {
		t.Fatalf("List() = %+v, want the new generation current and the adopted one", gens)
	}
	adopted := gens[1]
	if want := "000001-" + mtime.Format(timeLayout); adopted.Name != want {
		t.Errorf("adopted generation = %s, want %s (named for the old directory's mtime)", adopted.Name, want)
	}
	if got, _ := tags(adopted.Dir, arm); got[0] != "old" {
		t.Errorf("adopted generation holds %q, want old", got)
	}
	if link, _ := os.Readlink(s.Path()); link != ".nbship/generations/c2.large.arm/"+g.Name {
		t.Errorf("slot symlink = %q, want relative to %s", link, g.Name)
	}
	if fi, err := os.Lstat(s.adoptedPath(adopted.Name)); err != nil || !fi.IsDir() {
		t.Errorf("adopted directory %s: %v, want the old directory there", s.adoptedPath(adopted.Name), err)
	}
	if _, err := s.Rollback(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	if got := served(t, s); got != "old" {
		t.Errorf("after rollback slot serves %q, want old", got)
	}
}

// Adopting alone (the first step of Publish and Rollback) keeps the slot
// readable at every moment; the reader runs across many adoptions.
func TestAdoptNeverMissing(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	oldScriptsDir(t, s, "old")
	stop := hammer(s)
	for i := range 20 {
		if i > 0 {
			// The slot is nbship's symlink from the last round: put a plain
			// directory in its place atomically.
			tmp := s.Path() + ".new"
			must(t, os.Mkdir(tmp, 0o755))
			writeImage(t, tmp, arm, "old")
			must(t, exchange(tmp, s.Path()))
			must(t, os.Remove(tmp))
		}
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		err = s.adoptLocked(context.Background())
		unlock()
		if err != nil {
			t.Fatal(err)
		}
		if cur, _ := s.Current(); cur == "" {
			t.Fatalf("round %d: slot not adopted", i)
		}
	}
	if reads, fails, first := stop(); fails != 0 {
		t.Errorf("%d of %d reads failed during 20 adoptions (first: %s)", fails, reads, first)
	}
}

// A crash at any step of an adoption leaves a slot that serves the old
// files, and the next run removes what the step left.
func TestAdoptRecover(t *testing.T) {
	const gen = "000001-20240506T070809Z"
	tests := []struct {
		name  string
		crash func(t *testing.T, s *Slot) // leaves the state after a step
	}{
		{"after the generation link", func(t *testing.T, s *Slot) {
			must(t, os.Symlink(s.adoptedLink(gen), filepath.Join(s.GenerationsDir(), gen)))
		}},
		{"after both links", func(t *testing.T, s *Slot) {
			must(t, os.Symlink(s.adoptedLink(gen), filepath.Join(s.GenerationsDir(), gen)))
			must(t, os.Symlink(s.target(gen), s.adoptedPath(gen)))
		}},
		{"in GC, after unlinking an adopted generation", func(t *testing.T, s *Slot) {
			// The slot is the plain directory again; an earlier adopted
			// generation lost its link but not its directory.
			must(t, os.Mkdir(s.adoptedPath(gen), 0o755))
			writeImage(t, s.adoptedPath(gen), arm, "gone")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openSlot(t, t.TempDir(), arm)
			oldScriptsDir(t, s, "old")
			if _, err := s.mkGensDir(); err != nil {
				t.Fatal(err)
			}
			tt.crash(t, s)
			if got := served(t, s); got != "old" {
				t.Fatalf("after the crash the slot serves %q, want old", got)
			}
			if _, err := s.GC(context.Background(), 3); err != nil {
				t.Fatal(err)
			}
			if got := served(t, s); got != "old" {
				t.Fatalf("after GC the slot serves %q, want old", got)
			}
			entries, _ := os.ReadDir(filepath.Dir(s.Path()))
			for _, e := range entries {
				if e.Name() != ".nbship" && e.Name() != "hydra-c2.large.arm" {
					t.Errorf("after GC, left in pxeDir: %s", e.Name())
				}
			}
			if gens := list(t, s); len(gens) != 0 {
				t.Errorf("after GC, List() = %v, want none", names(gens))
			}
			publish(t, s, "new", 3)
			gens := list(t, s)
			if len(gens) != 2 {
				t.Fatalf("List() = %v, want the adopted and the new generation", names(gens))
			}
			if got, _ := tags(gens[1].Dir, arm); got[0] != "old" {
				t.Errorf("adopted generation %s holds %q, want old", gens[1].Name, got)
			}
		})
	}
}

// GC removes an adopted generation, link and directory.
func TestGCAdopted(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	oldScriptsDir(t, s, "old")
	publish(t, s, "1", 3)
	gens := list(t, s)
	adopted := gens[len(gens)-1]
	removed, err := s.GC(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != adopted.Name {
		t.Errorf("GC(1) removed %v, want [%s]", removed, adopted.Name)
	}
	for _, p := range []string{adopted.Dir, s.adoptedPath(adopted.Name)} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("GC left %s", p)
		}
	}
	if got := served(t, s); got != "1" {
		t.Errorf("slot serves %q, want 1", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// The x86 script realised the image with nix-store --add-root: the slot is
// a symlink into the store, whose files are symlinks to other store paths.
func TestAdoptNixStoreLink(t *testing.T) {
	store := t.TempDir()
	kernelPath := filepath.Join(store, "abc-linux", "bzImage")
	netboot := filepath.Join(store, "def-netboot")
	must(t, os.MkdirAll(filepath.Dir(kernelPath), 0o755))
	must(t, os.MkdirAll(filepath.Join(netboot, "nix-support"), 0o755))
	writeImage(t, netboot, x86, "store")
	must(t, os.Rename(filepath.Join(netboot, "bzImage"), kernelPath))
	must(t, os.Symlink(kernelPath, filepath.Join(netboot, "bzImage")))
	for _, p := range []string{kernelPath, filepath.Join(netboot, "initrd"), filepath.Join(netboot, ScriptName)} {
		os.Chmod(p, 0o444)
	}

	s := openSlot(t, t.TempDir(), x86)
	s.storeDir = store
	must(t, os.Symlink(netboot, s.Path()))
	publish(t, s, "new", 3)
	gens := list(t, s)
	if len(gens) != 2 || gens[1].Files != 3 {
		t.Fatalf("List() = %+v, want the new generation and the store's 3 files kept", gens)
	}
	if err := Verify(gens[1].Dir, x86); err != nil {
		t.Errorf("kept store image does not verify: %v", err)
	}
	if fi, err := os.Stat(kernelPath); err != nil || fi.Mode().Perm() != 0o444 {
		t.Errorf("store file mode = %v, %v, want it left 0444", fi.Mode(), err)
	}
	if target, _ := os.Readlink(filepath.Join(netboot, "bzImage")); target != kernelPath {
		t.Errorf("store path changed: bzImage -> %q", target)
	}
}

func TestAdoptDanglingLink(t *testing.T) {
	s := openSlot(t, t.TempDir(), x86)
	must(t, os.Symlink("/nix/store/gone-netboot", s.Path()))
	var notes []string
	s.Logf = func(f string, a ...any) { notes = append(notes, f) }
	publish(t, s, "new", 3)
	if gens := list(t, s); len(gens) != 1 {
		t.Errorf("List() = %v, want only the new generation", names(gens))
	}
	if len(notes) == 0 || !strings.Contains(notes[0], "does not resolve") {
		t.Errorf("notes = %q, want one about the dangling link", notes)
	}
}

func TestSlotIsFile(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	writeFile(t, s.Path(), []byte("x"))
	dir, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, dir, arm, "1")
	_, err = s.Publish(context.Background(), dir, 3)
	wantErr(t, err, "hydra-c2.large.arm is neither a directory nor a symlink; move it away")
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("staging dir kept after failed publish")
	}
}

// The old scripts ran once more after nbship published: rollback keeps
// their directory as the newest generation and goes back from it.
func TestRollbackAdopts(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	g1 := publish(t, s, "1", 3)
	must(t, os.Rename(s.Path(), s.Path()+".gone"))
	oldScriptsDir(t, s, "old")
	g, err := s.Rollback(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if g.Name != g1.Name || served(t, s) != "1" {
		t.Errorf("Rollback() = %s serving %q, want %s serving 1", g.Name, served(t, s), g1.Name)
	}
	if gens := list(t, s); len(gens) != 2 || !strings.HasPrefix(gens[0].Name, "000002-") {
		t.Errorf("List() = %v, want the adopted directory as 000002", names(gens))
	}
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// A slot symlink, or a file in the directory it leads to, that resolves
// outside pxeDir and the Nix store is refused: adopting it would serve
// whatever it points to. Nothing there changes mode, nothing is published.
func TestAdoptRefusesLinksOutside(t *testing.T) {
	for _, tc := range []struct {
		name string
		// layout makes the slot link; it returns the link refused and
		// the secret file that must stay as it was.
		layout func(t *testing.T, s *Slot, store, outside string) (link, secret string)
	}{
		{"slot to a directory elsewhere", func(t *testing.T, s *Slot, store, outside string) (string, string) {
			writeImage(t, outside, x86, "outside")
			secret := filepath.Join(outside, "secret")
			writeFile(t, secret, []byte("secret"))
			for _, f := range []string{secret, filepath.Join(outside, "initrd")} {
				must(t, os.Chmod(f, 0o600))
			}
			must(t, os.Symlink(outside, s.Path()))
			return s.Path(), secret
		}},
		{"slot through a relative link in pxeDir", func(t *testing.T, s *Slot, store, outside string) (string, string) {
			writeImage(t, outside, x86, "outside")
			secret := filepath.Join(outside, "initrd")
			must(t, os.Chmod(secret, 0o600))
			hop := filepath.Join(filepath.Dir(s.Path()), "old")
			must(t, os.Symlink(outside, hop))
			must(t, os.Symlink("old", s.Path()))
			return s.Path(), secret
		}},
		{"file in the store linking elsewhere", func(t *testing.T, s *Slot, store, outside string) (string, string) {
			netboot := filepath.Join(store, "def-netboot")
			must(t, os.MkdirAll(netboot, 0o755))
			writeImage(t, netboot, x86, "store")
			secret := filepath.Join(outside, "secret")
			writeFile(t, secret, []byte("secret"))
			must(t, os.Chmod(secret, 0o600))
			must(t, os.Symlink(secret, filepath.Join(netboot, "leak")))
			must(t, os.Symlink(netboot, s.Path()))
			return filepath.Join(netboot, "leak"), secret
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openSlot(t, t.TempDir(), x86)
			store, outside := t.TempDir(), t.TempDir()
			s.storeDir = store
			link, secret := tc.layout(t, s, store, outside)
			before, _ := os.Readlink(s.Path())
			dir, err := s.Stage()
			must(t, err)
			writeImage(t, dir, x86, "new")
			_, err = s.Publish(context.Background(), dir, 3)
			wantErr(t, err, link+" points outside pxeDir and the Nix store (-> ", "remove the link")
			if got := mode(t, secret); got != 0o600 {
				t.Errorf("%s mode = %v after the refused adoption, want 0600", secret, got)
			}
			if after, _ := os.Readlink(s.Path()); after != before {
				t.Errorf("slot -> %q after the refusal, want it left -> %q", after, before)
			}
			if gens := list(t, s); len(gens) != 0 {
				t.Errorf("List() = %v after the refusal, want nothing published", names(gens))
			}
		})
	}
}

// A slot linking to a directory inside pxeDir is kept. A file there that
// is not readable by all and has another hard link (outside pxeDir) is
// copied, not opened up: the other name keeps its mode.
func TestAdoptLinkInsidePXEDirCopiesSharedFiles(t *testing.T) {
	pxe := t.TempDir()
	s := openSlot(t, pxe, x86)
	old := filepath.Join(pxe, "old-image")
	must(t, os.Mkdir(old, 0o755))
	writeImage(t, old, x86, "old")
	private := filepath.Join(t.TempDir(), "initrd")
	must(t, os.Chmod(filepath.Join(old, "initrd"), 0o600))
	must(t, os.Link(filepath.Join(old, "initrd"), private))
	must(t, os.Symlink("old-image", s.Path()))

	publish(t, s, "new", 3)
	gens := list(t, s)
	if len(gens) != 2 {
		t.Fatalf("List() = %v, want the new generation and the kept one", names(gens))
	}
	if got, _ := tags(gens[1].Dir, x86); got[0] != "old" {
		t.Errorf("kept generation holds %q, want old", got)
	}
	if got := mode(t, private); got != 0o600 {
		t.Errorf("the other link of the kept initrd has mode %v, want 0600 still", got)
	}
	kept := filepath.Join(gens[1].Dir, "initrd")
	if got := mode(t, kept); got&0o444 != 0o444 {
		t.Errorf("kept initrd mode = %v, want readable by all", got)
	}
	if a, b := readAll(t, kept), readAll(t, private); a != b {
		t.Errorf("kept initrd differs from the original")
	}
}

// Publishing makes a staged file readable by all only when no other name
// shares its inode; a hard link from elsewhere is replaced by a copy.
func TestPublishNeverOpensUpSharedInodes(t *testing.T) {
	s := openSlot(t, t.TempDir(), x86)
	dir, err := s.Stage()
	must(t, err)
	writeImage(t, dir, x86, "1")
	private := filepath.Join(t.TempDir(), "bzImage")
	must(t, os.Chmod(filepath.Join(dir, "bzImage"), 0o600))
	must(t, os.Link(filepath.Join(dir, "bzImage"), private))
	g, err := s.Publish(context.Background(), dir, 0)
	must(t, err)
	if got := mode(t, private); got != 0o600 {
		t.Errorf("the other link of bzImage has mode %v after publishing, want 0600 still", got)
	}
	pub := filepath.Join(g.Dir, "bzImage")
	if got := mode(t, pub); got != 0o644 {
		t.Errorf("published bzImage mode = %v, want 0644", got)
	}
	if readAll(t, pub) != readAll(t, private) {
		t.Errorf("published bzImage differs from what was staged")
	}
	if err := Verify(g.Dir, x86); err != nil {
		t.Errorf("published generation does not verify: %v", err)
	}
}
