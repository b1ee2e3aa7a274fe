package image

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/staging"
)

// DefaultKeep is how many generations a slot keeps when not told otherwise.
const DefaultKeep = 3

const (
	stateDir    = ".nbship"     // under pxeDir
	gensDir     = "generations" // under stateDir, one directory per instance
	locksDir    = "locks"       // under stateDir, INSTANCE.lock
	stagePrefix = ".staging-"   // in the instance's generations directory
	// creatingPrefix names a staging directory in the instant before it is
	// locked; only those are judged by age.
	creatingPrefix = ".creating-"
	trashPrefix    = ".trash-" // a generation being removed
	sumsSuffix     = ".sums"   // GEN.sums beside GEN
	timeLayout     = "20060102T150405Z"
	nixStore       = "/nix/store" // a slot symlink may point into it
)

// Generation is one published image of a slot.
type Generation struct {
	Name    string    `json:"name"` // NNNNNN-YYYYMMDDTHHMMSSZ: publish counter and UTC time
	Dir     string    `json:"dir"`
	Current bool      `json:"current"` // the slot points at it
	Time    time.Time `json:"time"`    // when it was published (adopted: the old directory's mtime)
	Files   int       `json:"files"`
	Bytes   int64     `json:"bytes"`
	// Previous is, from Publish and Rollback, the generation the slot
	// served just before they switched it ("" if none), read under the
	// slot's lock: a concurrent publish cannot make it stale.
	Previous string `json:"-"`

	seq uint64
}

// parseGen splits a generation name into its counter and time.
func parseGen(name string) (seq uint64, t time.Time, ok bool) {
	num, ts, found := strings.Cut(name, "-")
	if !found || len(num) < 6 || len(num) > 19 || strings.Trim(num, "0123456789") != "" {
		return 0, time.Time{}, false
	}
	seq, err := strconv.ParseUint(num, 10, 64)
	if err != nil || seq == 0 {
		return 0, time.Time{}, false
	}
	t, err = time.Parse(timeLayout, ts)
	if err != nil || t.Format(timeLayout) != ts {
		return 0, time.Time{}, false
	}
	return seq, t, true
}

func genName(seq uint64, t time.Time) string {
	return fmt.Sprintf("%06d-%s", seq, t.UTC().Format(timeLayout))
}

// Slot is where one instance type's netboot image is served:
// PXEDIR/hydra-INSTANCE, a relative symlink to the current generation. See
// the package documentation for the layout.
//
// A Slot is safe for concurrent use, and any number of Slots (in any number
// of processes) may act on the same slot: Publish, Rollback and GC take the
// slot's lock.
type Slot struct {
	// Logf, if set, receives notes: waiting for the lock, adopting a slot
	// the old scripts left, cleaning up after a crashed run.
	Logf func(format string, a ...any)

	pxeDir  string
	profile Profile

	mu      sync.Mutex
	staging map[string]*staging.Dir // staged dir -> its lock
	// storeDir is the Nix store a slot symlink may point into (tests: a
	// directory of their own).
	storeDir string
}

// OpenSlot opens the slot of profile p's instance in pxeDir, which must
// exist. The .nbship directories are created (mode 0755, so nginx can read
// generations) when first needed, not here: List works on a pxeDir nbship
// has not published to yet. p's System and Kernel are only needed by
// Publish, Rollback and Verify.
func OpenSlot(pxeDir string, p Profile) (*Slot, error) {
	if err := ValidName(p.Name); err != nil {
		return nil, err
	}
	abs, err := checkPXEDir(pxeDir)
	if err != nil {
		return nil, err
	}
	return &Slot{pxeDir: abs, profile: p, staging: map[string]*staging.Dir{}, storeDir: nixStore}, nil
}

func checkPXEDir(pxeDir string) (string, error) {
	abs, err := filepath.Abs(pxeDir)
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("image: pxeDir %s does not exist; check pxeDir in the config or --pxe-dir", abs)
		}
		return "", fmt.Errorf("image: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("image: pxeDir %s is not a directory; check pxeDir in the config or --pxe-dir", abs)
	}
	return abs, nil
}

// Profile returns the slot's profile.
func (s *Slot) Profile() Profile { return s.profile }

// Path is the slot's path, PXEDIR/hydra-INSTANCE.
func (s *Slot) Path() string { return filepath.Join(s.pxeDir, SlotName(s.profile.Name)) }

// GenerationsDir holds the slot's generations, staging directories and hash
// files: PXEDIR/.nbship/generations/INSTANCE.
func (s *Slot) GenerationsDir() string {
	return filepath.Join(s.pxeDir, stateDir, gensDir, s.profile.Name)
}

// target is what the slot symlink holds for generation name: relative to
// pxeDir, so nginx, chroots and bind mounts all resolve it.
func (s *Slot) target(name string) string {
	return filepath.Join(stateDir, gensDir, s.profile.Name, name)
}

func (s *Slot) logf(format string, a ...any) {
	if s.Logf != nil {
		s.Logf(format, a...)
	}
}

// mkdirs creates pxeDir/elem[0]/elem[1]/… as needed, each 0755 whatever the
// umask, and returns the last.
func (s *Slot) mkdirs(elem ...string) (string, error) {
	p := s.pxeDir
	for _, e := range elem {
		p = filepath.Join(p, e)
		err := os.Mkdir(p, 0o755)
		if err == nil {
			err = os.Chmod(p, 0o755)
		} else if errors.Is(err, fs.ErrExist) {
			err = nil
		}
		if err != nil {
			return "", fmt.Errorf("image: %w", err)
		}
	}
	return p, nil
}

func (s *Slot) mkGensDir() (string, error) { return s.mkdirs(stateDir, gensDir, s.profile.Name) }

// Lock takes the slot's lock (flock on PXEDIR/.nbship/locks/INSTANCE.lock),
// waiting until it is free or ctx ends. It is released by unlock or when
// the process exits. Publish, Rollback and GC take it themselves: do not
// call them while holding it, they would wait for ever.
func (s *Slot) Lock(ctx context.Context) (unlock func(), err error) {
	dir, err := s.mkdirs(stateDir, locksDir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, s.profile.Name+".lock")
	// Read-only is enough for flock and works on a lock file another user created.
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image: lock of slot %s: %w", s.profile.Name, err)
	}
	wait, noted := 2*time.Millisecond, false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("image: lock %s: %w", path, err)
		}
		if !noted {
			s.logf("waiting for slot %s: another nbship holds %s", s.profile.Name, path)
			noted = true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("image: waiting for the lock of slot %s: %w", s.profile.Name, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 100*time.Millisecond)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

// Stage makes a new empty directory for the next generation, on the same
// file system as the generations (PXEDIR/.nbship/generations/INSTANCE/
// .staging-XXXX). Write the image's files into it, flat, then call Publish
// or Discard. While this process holds it, no cleanup removes it; left
// behind by a crash, the next Publish or GC removes it.
func (s *Slot) Stage() (dir string, err error) {
	gd, err := s.mkGensDir()
	if err != nil {
		return "", err
	}
	// Made under another name, locked, then renamed: a directory named
	// .staging-* is locked from its first moment, so an unlocked one is
	// always a dead writer's and any cleanup may remove it at once.
	d, err := staging.Make(gd, creatingPrefix, stagePrefix)
	if err != nil {
		return "", fmt.Errorf("image: staging directory: %w", err)
	}
	s.mu.Lock()
	s.staging[d.Path] = d
	s.mu.Unlock()
	return d.Path, nil
}

func (s *Slot) checkStaged(staged string) (string, error) {
	c := filepath.Clean(staged)
	if filepath.Dir(c) != s.GenerationsDir() || !strings.HasPrefix(filepath.Base(c), stagePrefix) {
		return "", fmt.Errorf("image: %s is not a staging directory of slot %s; get one from Stage", staged, s.profile.Name)
	}
	return c, nil
}

// release drops the staging lock this Slot holds on dir, if any.
func (s *Slot) release(dir string) {
	s.mu.Lock()
	d := s.staging[dir]
	delete(s.staging, dir)
	s.mu.Unlock()
	if d != nil {
		d.Release()
	}
}

// Discard removes a staging directory and everything in it.
func (s *Slot) Discard(staged string) error {
	dir, err := s.checkStaged(staged)
	if err != nil {
		return err
	}
	s.release(dir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// Publish makes staged (from Stage) the slot's current generation and
// removes generations beyond the newest keep (0: DefaultKeep), never the
// current one.
//
// Staged is verified against the slot's profile first; a *VerifyError means
// the image was refused and the slot still serves what it served. Publish
// consumes staged either way: when it returns, staged has become the new
// generation or has been removed. The files are made world-readable, synced
// and hashed (for Have), the directory renamed to its generation name, and
// the slot symlink replaced by one rename(2), so every request sees the
// complete old or the complete new generation. Publish takes the slot's lock
// itself; concurrent publishes of one slot run one after the other and all
// succeed.
//
// A slot the old scripts left as a plain directory (or as a symlink into
// the Nix store) is kept as a generation first, without a moment where the
// slot path is missing.
func (s *Slot) Publish(ctx context.Context, staged string, keep int) (Generation, error) {
	if keep < 0 {
		return Generation{}, fmt.Errorf("image: keep %d: must be at least 1 (0 means %d)", keep, DefaultKeep)
	}
	if keep == 0 {
		keep = DefaultKeep
	}
	dir, err := s.checkStaged(staged)
	if err != nil {
		return Generation{}, err
	}
	published := false
	defer func() {
		if !published {
			s.Discard(dir)
		}
	}()
	sum, err := Inspect(dir, s.profile)
	if err != nil {
		return Generation{}, err
	}
	sums, err := prepare(ctx, dir)
	if err != nil {
		return Generation{}, err
	}
	unlock, err := s.lockAdopted(ctx)
	if err != nil {
		return Generation{}, err
	}
	defer unlock()
	prev, err := s.Current()
	if err != nil {
		return Generation{}, err
	}
	_, maxSeq, err := s.scan()
	if err != nil {
		return Generation{}, err
	}
	now := time.Now().UTC().Truncate(time.Second)
	name := genName(maxSeq+1, now)
	gd := s.GenerationsDir()
	final := filepath.Join(gd, name)
	if err := os.Rename(dir, final); err != nil {
		return Generation{}, fmt.Errorf("image: %w", err)
	}
	published = true
	s.release(dir)
	if err := writeSums(gd, name, sums); err != nil {
		s.logf("%v (Have will hash the files instead)", err)
	}
	if err := syncDir(gd); err != nil {
		os.RemoveAll(final)
		return Generation{}, err
	}
	if err := s.point(name); err != nil {
		os.RemoveAll(final)
		os.Remove(filepath.Join(gd, name+sumsSuffix))
		return Generation{}, err
	}
	if _, err := s.gcLocked(keep); err != nil {
		s.logf("published %s, but cleaning up old generations failed: %v", name, err)
	}
	seq, _, _ := parseGen(name)
	return Generation{Name: name, Dir: final, Current: true, Time: now, Files: sum.Files, Bytes: sum.Bytes, Previous: prev, seq: seq}, nil
}

// point replaces the slot symlink by one to generation name: a new symlink
// beside it, renamed over it, and the directory synced. An error means the
// slot was not switched; once the rename is done, a failed sync is only
// noted, since the switch is visible and callers must not undo it.
func (s *Slot) point(name string) error {
	var tmp string
	for i := 0; ; i++ {
		tmp = filepath.Join(s.pxeDir, "."+SlotName(s.profile.Name)+".tmp-"+randHex(4))
		err := os.Symlink(s.target(name), tmp)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i == 10 {
			return fmt.Errorf("image: %w", err)
		}
	}
	if err := os.Rename(tmp, s.Path()); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("image: switch %s to %s: %w", s.Path(), name, err)
	}
	if err := syncDir(s.pxeDir); err != nil {
		s.logf("%s now serves %s, but: %v", s.Path(), name, err)
	}
	return nil
}

type slotState int

const (
	slotMissing  slotState = iota
	slotOurs               // symlink to one of our generations
	slotPlainDir           // directory, as the old scripts left it
	slotForeign            // symlink elsewhere (nix-store --add-root), maybe dangling
	slotOther              // a file or something stranger
)

// state says what the slot path is; for slotOurs, name is the current
// generation; for slotForeign, the link's target.
func (s *Slot) state() (st slotState, name string, err error) {
	fi, err := os.Lstat(s.Path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return slotMissing, "", nil
	case err != nil:
		return 0, "", fmt.Errorf("image: %w", err)
	case fi.IsDir():
		return slotPlainDir, "", nil
	case fi.Mode()&fs.ModeSymlink == 0:
		return slotOther, "", nil
	}
	target, err := os.Readlink(s.Path())
	if err != nil {
		return 0, "", fmt.Errorf("image: %w", err)
	}
	abs := target
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(s.pxeDir, abs)
	}
	abs = filepath.Clean(abs)
	if filepath.Dir(abs) == s.GenerationsDir() {
		if _, _, ok := parseGen(filepath.Base(abs)); ok {
			return slotOurs, filepath.Base(abs), nil
		}
	}
	return slotForeign, target, nil
}

// Current returns the name of the generation the slot points at, or "" if
// it points at none of them (not published by nbship yet).
func (s *Slot) Current() (string, error) {
	st, name, err := s.state()
	if err != nil || st != slotOurs {
		return "", err
	}
	return name, nil
}

// scan lists the generation directories, newest first, and the highest
// counter of any generation name in use (directories or symlinks).
func (s *Slot) scan() (gens []Generation, maxSeq uint64, err error) {
	gd := s.GenerationsDir()
	entries, err := os.ReadDir(gd)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("image: %w", err)
	}
	for _, e := range entries {
		seq, t, ok := parseGen(e.Name())
		if !ok {
			continue
		}
		maxSeq = max(maxSeq, seq)
		dir := filepath.Join(gd, e.Name())
		if !e.IsDir() {
			// An adopted directory is a link to where it was adopted.
			if fi, err := os.Stat(dir); e.Type()&fs.ModeSymlink == 0 || err != nil || !fi.IsDir() {
				continue
			}
		}
		gens = append(gens, Generation{Name: e.Name(), Dir: dir, Time: t, seq: seq})
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].seq > gens[j].seq })
	return gens, maxSeq, nil
}

// List returns the slot's generations, newest first, the current one marked.
func (s *Slot) List() ([]Generation, error) {
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	gens, _, err := s.scan()
	if err != nil {
		return nil, err
	}
	for i := range gens {
		g := &gens[i]
		g.Current = g.Name == cur
		entries, err := os.ReadDir(g.Dir)
		if err != nil {
			continue // removed by a concurrent GC
		}
		for _, e := range entries {
			if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
				g.Files++
				g.Bytes += info.Size()
			}
		}
	}
	return gens, nil
}

// Rollback points the slot at generation to ("": the one before the
// current), after verifying it against the slot's profile. to may also be
// the generation's counter alone ("2" for 000002-…).
func (s *Slot) Rollback(ctx context.Context, to string) (Generation, error) {
	unlock, err := s.lockAdopted(ctx)
	if err != nil {
		return Generation{}, err
	}
	defer unlock()
	gens, err := s.List()
	if err != nil {
		return Generation{}, err
	}
	cur, err := s.Current()
	if err != nil {
		return Generation{}, err
	}
	var target *Generation
	if to == "" {
		if cur == "" {
			return Generation{}, fmt.Errorf("image: slot %s has no current generation to roll back from; name one with --to (see nbship image list)", s.profile.Name)
		}
		curSeq, _, _ := parseGen(cur)
		for i := range gens { // newest first: the first older one
			if gens[i].seq < curSeq {
				target = &gens[i]
				break
			}
		}
		if target == nil {
			return Generation{}, fmt.Errorf("image: slot %s has no generation older than the current %s to roll back to; name one with --to (see nbship image list)", s.profile.Name, cur)
		}
	} else {
		g, err := find(gens, s.profile.Name, to)
		if err != nil {
			return Generation{}, err
		}
		target = &g
	}
	if err := Verify(target.Dir, s.profile); err != nil {
		var ve *VerifyError
		if errors.As(err, &ve) {
			return Generation{}, &VerifyError{Path: ve.Path, Msg: ve.Msg + fmt.Sprintf("; not rolling back, slot %s still serves %s", s.profile.Name, cur)}
		}
		return Generation{}, err
	}
	if target.Name != cur {
		if err := s.point(target.Name); err != nil {
			return Generation{}, err
		}
	}
	target.Current = true
	target.Previous = cur
	return *target, nil
}

// Find returns the generation called name, or whose counter name is
// ("2" for 000002-…).
func (s *Slot) Find(name string) (Generation, error) {
	gens, err := s.List()
	if err != nil {
		return Generation{}, err
	}
	return find(gens, s.profile.Name, name)
}

func find(gens []Generation, instance, name string) (Generation, error) {
	n, numErr := strconv.ParseUint(name, 10, 64)
	for _, g := range gens {
		if g.Name == name || numErr == nil && g.seq == n {
			return g, nil
		}
	}
	have := make([]string, len(gens))
	for i, g := range gens {
		have[i] = g.Name
	}
	if len(have) == 0 {
		have = []string{"none"}
	}
	return Generation{}, fmt.Errorf("image: slot %s has no generation %q; it has: %s", instance, name, strings.Join(have, ", "))
}

// GC removes the slot's generations beyond the newest keep (at least 1),
// never the current one, and what crashed runs left: staging directories
// older than an hour that no process holds, half-removed generations,
// stray temporary symlinks. It returns the generations it removed.
func (s *Slot) GC(ctx context.Context, keep int) (removed []string, err error) {
	if keep < 1 {
		return nil, fmt.Errorf("image: keep %d: must be at least 1", keep)
	}
	unlock, err := s.Lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.recoverLocked(); err != nil {
		return nil, err
	}
	return s.gcLocked(keep)
}

func (s *Slot) gcLocked(keep int) (removed []string, err error) {
	cur, err := s.Current()
	if err != nil {
		return nil, err
	}
	gens, _, err := s.scan()
	if err != nil {
		return nil, err
	}
	gd := s.GenerationsDir()
	for i, g := range gens {
		if i < keep || g.Name == cur {
			continue
		}
		// Renamed (or unlinked) first, so a crash mid-removal leaves no half
		// generation in the list; the next run removes the rest.
		trash := filepath.Join(gd, trashPrefix+g.Name)
		if t, err := os.Readlink(g.Dir); err == nil {
			trash = ""
			if t == s.adoptedLink(g.Name) {
				trash = s.adoptedPath(g.Name)
			}
			err = os.Remove(g.Dir)
		} else {
			err = os.Rename(g.Dir, trash)
		}
		if err != nil {
			return removed, fmt.Errorf("image: remove generation %s: %w", g.Name, err)
		}
		os.Remove(filepath.Join(gd, g.Name+sumsSuffix))
		if trash != "" {
			if err := os.RemoveAll(trash); err != nil {
				return removed, fmt.Errorf("image: remove generation %s: %w", g.Name, err)
			}
		}
		removed = append(removed, g.Name)
	}
	if err := s.cleanLocked(); err != nil {
		return removed, err
	}
	if len(removed) > 0 {
		return removed, syncDir(gd)
	}
	return removed, nil
}

// cleanLocked removes what crashed runs left. Holding the slot lock, every
// temporary symlink and trash directory is a leftover; staging directories
// are left alone while their writer holds them or for an hour.
func (s *Slot) cleanLocked() error {
	gd := s.GenerationsDir()
	entries, err := os.ReadDir(gd)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image: %w", err)
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Name()] = true
	}
	for _, e := range entries {
		n, p := e.Name(), filepath.Join(gd, e.Name())
		switch {
		case strings.HasPrefix(n, trashPrefix):
			os.RemoveAll(p)
		case strings.HasPrefix(n, creatingPrefix):
			if fi, err := os.Lstat(p); err == nil && time.Since(fi.ModTime()) > staging.StaleAge {
				os.RemoveAll(p)
			}
		case strings.HasPrefix(n, stagePrefix):
			if s.staleStaging(p) {
				s.logf("removing %s, left by a run that did not finish", p)
				os.RemoveAll(p)
			}
		case strings.HasPrefix(n, ".") && strings.Contains(n, sumsSuffix+".tmp-"):
			os.Remove(p)
		case strings.HasSuffix(n, sumsSuffix) && !have[strings.TrimSuffix(n, sumsSuffix)]:
			os.Remove(p)
		}
	}
	links, err := os.ReadDir(s.pxeDir)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	prefix := "." + SlotName(s.profile.Name) + ".tmp-"
	for _, e := range links {
		if rest, ok := strings.CutPrefix(e.Name(), prefix); ok && isHex(rest, 8) && e.Type()&fs.ModeSymlink != 0 {
			os.Remove(filepath.Join(s.pxeDir, e.Name()))
		}
	}
	return nil
}

// staleStaging reports whether a staging directory was left by a crash:
// nobody holds its lock (see Stage).
func (s *Slot) staleStaging(dir string) bool { return staging.Stale(dir) }

// Instances lists the instance names that have a slot or generations in pxeDir.
func Instances(pxeDir string) ([]string, error) {
	pxeDir, err := checkPXEDir(pxeDir)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	entries, err := os.ReadDir(pxeDir)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	for _, e := range entries {
		if n, ok := strings.CutPrefix(e.Name(), "hydra-"); ok && ValidName(n) == nil && (e.IsDir() || e.Type()&fs.ModeSymlink != 0) {
			seen[n] = true
		}
	}
	entries, err = os.ReadDir(filepath.Join(pxeDir, stateDir, gensDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && ValidName(e.Name()) == nil {
			seen[e.Name()] = true
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("image: sync %s: %w", dir, err)
	}
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}
