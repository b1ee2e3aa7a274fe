package image

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func openSlot(t *testing.T, pxeDir string, p Profile) *Slot {
	t.Helper()
	s, err := OpenSlot(pxeDir, p)
	if err != nil {
		t.Fatal(err)
	}
	s.Logf = t.Logf
	return s
}

// publish stages an image of the slot's profile tagged tag and publishes it.
func publish(t *testing.T, s *Slot, tag string, keep int) Generation {
	t.Helper()
	dir, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, dir, s.Profile(), tag)
	g, err := s.Publish(context.Background(), dir, keep)
	if err != nil {
		t.Fatalf("Publish(%s) = %v", tag, err)
	}
	return g
}

// served returns the tag the slot serves, read through the slot path.
func served(t *testing.T, s *Slot) string {
	t.Helper()
	got, err := tags(s.Path(), s.Profile())
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != got[1] || got[1] != got[2] {
		t.Fatalf("slot serves a mix: %q", got)
	}
	return got[0]
}

func names(gens []Generation) []string {
	var n []string
	for _, g := range gens {
		n = append(n, g.Name)
	}
	return n
}

func list(t *testing.T, s *Slot) []Generation {
	t.Helper()
	gens, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	return gens
}

func TestPublishGenerations(t *testing.T) {
	pxe := t.TempDir()
	s := openSlot(t, pxe, arm)
	var pub []Generation
	for i := 1; i <= 3; i++ {
		pub = append(pub, publish(t, s, fmt.Sprint(i), 5))
	}
	gens := list(t, s)
	if len(gens) != 3 {
		t.Fatalf("List() = %v, want 3 generations", names(gens))
	}
	for i, g := range gens {
		want := pub[2-i]
		if g.Name != want.Name || g.Current != (i == 0) || g.Files != 3 || g.Bytes == 0 || g.Time.IsZero() {
			t.Errorf("List()[%d] = %+v, want %s, current %v, 3 files", i, g, want.Name, i == 0)
		}
		if !strings.HasPrefix(g.Name, fmt.Sprintf("%06d-", 3-i)) {
			t.Errorf("List()[%d].Name = %s, want counter %d", i, g.Name, 3-i)
		}
	}
	link, err := os.Readlink(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if want := ".nbship/generations/c2.large.arm/" + pub[2].Name; link != want {
		t.Errorf("slot symlink = %q, want relative %q", link, want)
	}
	if got := served(t, s); got != "3" {
		t.Errorf("slot serves %q, want 3", got)
	}
	for _, p := range []string{filepath.Join(pxe, ".nbship"), s.GenerationsDir(), pub[2].Dir} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("mode of %s = %v, %v, want 0755 so nginx reads it", p, fi.Mode(), err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.GenerationsDir(), pub[2].Name+".sums")); err != nil {
		t.Errorf("hash file of %s: %v", pub[2].Name, err)
	}
	if cur, _ := s.Current(); cur != pub[2].Name {
		t.Errorf("Current() = %q, want %q", cur, pub[2].Name)
	}
	// Nothing is left over beside the slot.
	entries, _ := os.ReadDir(pxe)
	for _, e := range entries {
		if e.Name() != ".nbship" && e.Name() != "hydra-c2.large.arm" {
			t.Errorf("left in pxeDir: %s", e.Name())
		}
	}
}

func TestPublishMakesFilesReadable(t *testing.T) {
	s := openSlot(t, t.TempDir(), x86)
	dir, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, dir, x86, "1")
	os.Chmod(filepath.Join(dir, "bzImage"), 0o600)
	g, err := s.Publish(context.Background(), dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(g.Dir, "bzImage")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("published bzImage mode = %v, %v, want 0644", fi.Mode(), err)
	}
}

func TestPublishRefused(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	first := publish(t, s, "good", 3)

	dir, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	writeImage(t, dir, x86, "bad") // an x86 image sent to the arm slot
	_, err = s.Publish(context.Background(), dir, 3)
	wantErr(t, err, "bzImage is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image")
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Errorf("Publish error %T, want *VerifyError", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staging dir after refusal: %v, want it removed", err)
	}
	if gens := list(t, s); len(gens) != 1 || gens[0].Name != first.Name || !gens[0].Current {
		t.Errorf("List() after refusal = %+v, want only %s, current", gens, first.Name)
	}
	if got := served(t, s); got != "good" {
		t.Errorf("slot serves %q after refusal, want good", got)
	}
}

func TestPublishNotStaging(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	other := t.TempDir()
	writeImage(t, other, arm, "1")
	_, err := s.Publish(context.Background(), other, 3)
	wantErr(t, err, "is not a staging directory of slot c2.large.arm")
	if _, err := os.Stat(filepath.Join(other, "Image")); err != nil {
		t.Errorf("Publish of a foreign directory touched it: %v", err)
	}
	if err := s.Discard(other); err == nil {
		t.Errorf("Discard(%s) = nil, want refusal", other)
	}
}

func TestKeep(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	var pub []Generation
	for i := 1; i <= 5; i++ {
		pub = append(pub, publish(t, s, fmt.Sprint(i), 2))
	}
	if got, want := names(list(t, s)), []string{pub[4].Name, pub[3].Name}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after 5 publishes keeping 2: %v, want %v", got, want)
	}
	sums, _ := filepath.Glob(filepath.Join(s.GenerationsDir(), "*.sums"))
	if len(sums) != 2 {
		t.Errorf("hash files = %v, want 2", sums)
	}
	// The current generation is kept even when it is not among the newest.
	if _, err := s.Rollback(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	publish(t, s, "6", 3) // 4 5 6
	if _, err := s.Rollback(context.Background(), pub[3].Name); err != nil {
		t.Fatal(err)
	}
	removed, err := s.GC(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 1 || removed[0] != pub[4].Name {
		t.Errorf("GC(1) removed %v, want [%s]", removed, pub[4].Name)
	}
	gens := list(t, s)
	if len(gens) != 2 || !gens[1].Current || gens[1].Name != pub[3].Name {
		t.Errorf("after GC(1): %+v, want the newest and the current %s", gens, pub[3].Name)
	}
	if _, err := s.GC(context.Background(), 0); err == nil {
		t.Errorf("GC(0) = nil error, want refusal")
	}
	if _, err := s.Publish(context.Background(), filepath.Join(s.GenerationsDir(), ".staging-x"), -1); err == nil {
		t.Errorf("Publish(keep -1) = nil error, want refusal")
	}
}

func TestRollback(t *testing.T) {
	ctx := context.Background()
	s := openSlot(t, t.TempDir(), x86)
	g1, g2, g3 := publish(t, s, "1", 5), publish(t, s, "2", 5), publish(t, s, "3", 5)
	steps := []struct {
		to      string
		want    string // generation name, or error substring
		serving string
	}{
		{"", g2.Name, "2"},
		{"", g1.Name, "1"},
		{"", "no generation older than the current " + g1.Name, "1"},
		{g3.Name, g3.Name, "3"},
		{"2", g2.Name, "2"},
		{"000001-20000101T000000Z", `has no generation "000001-20000101T000000Z"; it has: ` + g3.Name + ", " + g2.Name + ", " + g1.Name, "2"},
		{"nope", `slot m2.xlarge.x86 has no generation "nope"`, "2"},
		{g2.Name, g2.Name, "2"},
	}
	for _, st := range steps {
		g, err := s.Rollback(ctx, st.to)
		if strings.HasPrefix(st.want, "0000") {
			if err != nil || g.Name != st.want || !g.Current {
				t.Fatalf("Rollback(%q) = %+v, %v, want %s", st.to, g, err, st.want)
			}
		} else {
			wantErr(t, err, st.want)
		}
		if got := served(t, s); got != st.serving {
			t.Fatalf("after Rollback(%q) slot serves %q, want %q", st.to, got, st.serving)
		}
		if cur, _ := s.Current(); err == nil && cur != g.Name {
			t.Fatalf("after Rollback(%q) Current() = %s, want %s", st.to, cur, g.Name)
		}
	}
	// A generation that no longer verifies is not switched to.
	writeFile(t, filepath.Join(g1.Dir, "bzImage"), fakeKernel(Aarch64, "1"))
	_, err := s.Rollback(ctx, g1.Name)
	wantErr(t, err, g1.Name+"/bzImage is an aarch64 Image, but slot m2.xlarge.x86 needs an x86_64 bzImage", "not rolling back, slot m2.xlarge.x86 still serves "+g2.Name)
	if got := served(t, s); got != "2" {
		t.Errorf("after refused rollback slot serves %q, want 2", got)
	}
}

func TestRollbackEmpty(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	_, err := s.Rollback(context.Background(), "")
	wantErr(t, err, "slot c2.large.arm has no current generation")
	_, err = s.Rollback(context.Background(), "1")
	wantErr(t, err, `has no generation "1"; it has: none`)
}

func TestConcurrentPublish(t *testing.T) {
	pxe := t.TempDir()
	var wg sync.WaitGroup
	gens := make([]Generation, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenSlot(pxe, arm) // a Slot each, as two processes would have
			if err != nil {
				errs[i] = err
				return
			}
			dir, err := s.Stage()
			if err != nil {
				errs[i] = err
				return
			}
			writeImage(t, dir, arm, fmt.Sprint("p", i))
			gens[i], errs[i] = s.Publish(context.Background(), dir, 3)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	if gens[0].Name == gens[1].Name {
		t.Fatalf("both publishes made %s", gens[0].Name)
	}
	s := openSlot(t, pxe, arm)
	all := list(t, s)
	if len(all) != 2 || !all[0].Current || all[1].Current {
		t.Fatalf("List() = %+v, want 2 generations, the newest current", all)
	}
	newest := gens[0]
	if gens[1].Name > newest.Name {
		newest = gens[1]
	}
	if all[0].Name != newest.Name {
		t.Errorf("current = %s, want the later publish %s", all[0].Name, newest.Name)
	}
	// Each says what the slot served when it had the lock.
	if newest.Previous != all[1].Name || all[1].Name == gens[0].Name && gens[0].Previous != "" || all[1].Name == gens[1].Name && gens[1].Previous != "" {
		t.Errorf("Previous = %q, %q; want the first publish to have replaced nothing and the second the first", gens[0].Previous, gens[1].Previous)
	}
	if got, want := served(t, s), tagOf([]byte(readAll(t, filepath.Join(newest.Dir, ScriptName)))); got != want {
		t.Errorf("slot serves %q, want %q", got, want)
	}
}

// A reader fetching through the slot while publishes switch it never finds
// the path missing, and a generation's directory always holds one
// generation's three files.
func TestPublishAtomicForReaders(t *testing.T) {
	pxe := t.TempDir()
	s := openSlot(t, pxe, arm)
	publish(t, s, "0", 100)
	stopHammer := hammer(s) // through the slot path, as nginx opens it
	stop := make(chan struct{})
	var mixed, missing atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // resolve once, then read the three files of that generation
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			link, err := os.Readlink(s.Path())
			if err != nil {
				missing.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			got, err := tags(filepath.Join(pxe, link), arm)
			if err != nil {
				missing.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			if got[0] != got[1] || got[1] != got[2] {
				mixed.Add(1)
			}
		}
	}()
	for i := 1; i <= 10; i++ {
		publish(t, s, fmt.Sprint(i), 100)
	}
	close(stop)
	wg.Wait()
	reads, fails, first := stopHammer()
	if first == "" {
		first, _ = firstErr.Load().(string)
	}
	if fails+missing.Load() != 0 || mixed.Load() != 0 {
		t.Errorf("during 10 publishes: %d failed reads (first: %v), %d mixed generations, of %d reads", fails+missing.Load(), first, mixed.Load(), reads)
	}
	if reads == 0 {
		t.Errorf("the reader never ran")
	}
	if got := served(t, s); got != "10" {
		t.Errorf("slot serves %q, want 10", got)
	}
}

func TestLockWaitsAndCancels(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	other := openSlot(t, filepath.Dir(s.Path()), arm)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := other.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while held = %v, want deadline exceeded", err)
	}
	done := make(chan error)
	go func() {
		u, err := other.Lock(context.Background())
		if err == nil {
			u()
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	unlock()
	unlock() // twice is harmless
	if err := <-done; err != nil {
		t.Fatalf("Lock after unlock = %v", err)
	}
}

func TestStaleStaging(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	held, err := s.Stage() // this process still writes it
	if err != nil {
		t.Fatal(err)
	}
	// An unlocked .staging-* is a dead writer's however young: Stage locks
	// before it names a directory so. Only .creating-* (the instant before
	// the lock) is judged by age.
	crashed := filepath.Join(s.GenerationsDir(), ".staging-crashed")
	creatingOld := filepath.Join(s.GenerationsDir(), ".creating-old")
	fresh := filepath.Join(s.GenerationsDir(), ".creating-fresh")
	for _, d := range []string{crashed, creatingOld, fresh} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(held, old, old)
	os.Chtimes(creatingOld, old, old)
	// Leftovers a crash between steps leaves: a trash directory, a temporary symlink.
	os.Mkdir(filepath.Join(s.GenerationsDir(), ".trash-000001-20200101T000000Z"), 0o755)
	tmpLink := filepath.Join(filepath.Dir(s.Path()), ".hydra-c2.large.arm.tmp-0a1b2c3d")
	os.Symlink("nowhere", tmpLink)
	otherLink := filepath.Join(filepath.Dir(s.Path()), ".hydra-c2.large.arm.tmp-foo.tmp-0a1b2c3d")
	os.Symlink("nowhere", otherLink) // another instance's, c2.large.arm.tmp-foo

	if _, err := s.GC(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{held: true, fresh: true, crashed: false, creatingOld: false, tmpLink: false, otherLink: true,
		filepath.Join(s.GenerationsDir(), ".trash-000001-20200101T000000Z"): false} {
		_, err := os.Lstat(path)
		if got := err == nil; got != want {
			t.Errorf("after GC %s exists = %v, want %v", filepath.Base(path), got, want)
		}
	}
	if err := s.Discard(held); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(held); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Discard left %s: %v", held, err)
	}
}

func TestHave(t *testing.T) {
	s := openSlot(t, t.TempDir(), arm)
	have, err := s.Have()
	if err != nil || len(have) != 0 {
		t.Fatalf("Have() on an empty slot = %v, %v, want empty", have, err)
	}
	g := publish(t, s, "1", 3)
	check := func(when string) {
		t.Helper()
		have, err := s.Have()
		if err != nil {
			t.Fatal(err)
		}
		if len(have) != 3 {
			t.Fatalf("%s: Have() has %d files, want 3", when, len(have))
		}
		for _, name := range []string{"Image", "initrd", ScriptName} {
			sum := sha256.Sum256([]byte(readAll(t, filepath.Join(g.Dir, name))))
			if have[sum] != filepath.Join(g.Dir, name) {
				t.Errorf("%s: Have()[sha256 of %s] = %q, want %q", when, name, have[sum], filepath.Join(g.Dir, name))
			}
		}
	}
	check("from the hash file")
	sums := filepath.Join(s.GenerationsDir(), g.Name+".sums")
	os.Remove(sums)
	check("without the hash file")
	if _, err := os.Stat(sums); err != nil {
		t.Errorf("Have() did not rewrite the hash file: %v", err)
	}
	// A file changed behind nbship's back is hashed again, not trusted.
	writeFile(t, filepath.Join(g.Dir, "initrd"), []byte("\x1f\x8b changed"))
	check("after a change")
}

func TestInstancesAndFind(t *testing.T) {
	pxe := t.TempDir()
	if got, err := Instances(pxe); err != nil || len(got) != 0 {
		t.Fatalf("Instances(empty) = %v, %v, want none", got, err)
	}
	s := openSlot(t, pxe, arm)
	g1 := publish(t, s, "1", 3)
	publish(t, openSlot(t, pxe, x86), "x", 3)
	must(t, os.Mkdir(filepath.Join(pxe, "hydra-c1.large.arm"), 0o755))
	must(t, os.Mkdir(filepath.Join(pxe, "hydra-bad name"), 0o755))
	writeFile(t, filepath.Join(pxe, "hydra-file"), nil)
	got, err := Instances(pxe)
	if want := "[c1.large.arm c2.large.arm m2.xlarge.x86]"; err != nil || fmt.Sprint(got) != want {
		t.Errorf("Instances = %v, %v, want %s", got, err, want)
	}
	if _, err := Instances(filepath.Join(pxe, "nope")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Instances(missing) = %v, want does not exist", err)
	}
	for _, name := range []string{g1.Name, "1", "000001"} {
		if g, err := s.Find(name); err != nil || g.Name != g1.Name {
			t.Errorf("Find(%q) = %v, %v, want %s", name, g.Name, err, g1.Name)
		}
	}
	if _, err := s.Find("2"); err == nil || !strings.Contains(err.Error(), `no generation "2"; it has: `+g1.Name) {
		t.Errorf("Find(2) = %v", err)
	}
}
