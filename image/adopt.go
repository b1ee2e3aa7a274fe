package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/confine"
	"github.com/nbship/nbship/internal/staging"
)

// Adopting a slot the old scripts left.
//
// A plain directory PXEDIR/hydra-X becomes generation G with one
// renameat2(RENAME_EXCHANGE) and is never moved again, so no lookup, not
// even one that started before the exchange, finds the path missing:
//
//  1. GENS/G := symlink "../../../.hydra-X.adopted-G"   (nothing there yet)
//  2. PXEDIR/.hydra-X.adopted-G := symlink ".nbship/generations/X/G"
//  3. exchange hydra-X and .hydra-X.adopted-G: the old directory now has
//     the hidden name, and hydra-X → GENS/G → .hydra-X.adopted-G resolves
//     to it. A lookup that had reached the directory through the old name
//     holds it already; one that starts now goes through the two links.
//
// (Moving the directory on into GENS would change what .hydra-X.adopted-G
// means under a lookup that read GENS/G's link just before, so it stays.)
// The generation is the symlink GENS/G; GC removes it and the directory.
// A crash before step 3 leaves links that lead nowhere, which
// recoverLocked removes; after it, the adoption is complete.
//
// A symlink into the Nix store (nix-store --add-root), or to a directory
// inside pxeDir, is kept by copying its files into a generation
// (hard-linking those readable by all already, where allowed) and pointing
// the slot at it, one rename. A symlink that leads anywhere else, or a file
// in it that does, is refused: adopting it would publish whatever it
// points to.

const adoptedInfix = ".adopted-"

// adoptedPath is where a plain directory adopted as generation name lives.
func (s *Slot) adoptedPath(name string) string {
	return filepath.Join(s.pxeDir, "."+SlotName(s.profile.Name)+adoptedInfix+name)
}

// adoptedLink is the target of GENS/name for an adopted directory.
func (s *Slot) adoptedLink(name string) string {
	return filepath.Join("..", "..", "..", filepath.Base(s.adoptedPath(name)))
}

// adoptedName returns the generation name of an adopted directory's
// entry in pxeDir, or "".
func (s *Slot) adoptedName(entry string) string {
	name, ok := strings.CutPrefix(entry, "."+SlotName(s.profile.Name)+adoptedInfix)
	if !ok {
		return ""
	}
	if _, _, ok := parseGen(name); !ok {
		return ""
	}
	return name
}

func exchange(a, b string) error {
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		return &os.LinkError{Op: "renameat2 RENAME_EXCHANGE", Old: a, New: b, Err: err}
	}
	return nil
}

// recoverLocked removes what an interrupted adoption or GC left: hidden
// links beside the slot, generation links that lead nowhere, adopted
// directories no generation refers to.
func (s *Slot) recoverLocked() error {
	entries, err := os.ReadDir(s.pxeDir)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	cur, err := s.Current()
	if err != nil {
		return err
	}
	gd := s.GenerationsDir()
	for _, e := range entries {
		name := s.adoptedName(e.Name())
		if name == "" {
			continue
		}
		p := filepath.Join(s.pxeDir, e.Name())
		switch {
		case e.Type()&fs.ModeSymlink != 0: // before step 3
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("image: %w", err)
			}
		case e.IsDir():
			if t, err := os.Readlink(filepath.Join(gd, name)); err != nil || t != s.adoptedLink(name) {
				if name == cur {
					continue // never break the slot
				}
				s.logf("removing %s, an adopted generation no longer listed", p)
				if err := os.RemoveAll(p); err != nil {
					return fmt.Errorf("image: %w", err)
				}
			}
		}
	}
	gens, err := os.ReadDir(gd)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image: %w", err)
	}
	for _, e := range gens {
		if _, _, ok := parseGen(e.Name()); !ok || e.Type()&fs.ModeSymlink == 0 || e.Name() == cur {
			continue
		}
		if fi, err := os.Stat(filepath.Join(gd, e.Name())); err != nil || !fi.IsDir() {
			if err := os.Remove(filepath.Join(gd, e.Name())); err != nil {
				return fmt.Errorf("image: %w", err)
			}
		}
	}
	return nil
}

// lockAdopted takes the slot's lock, removes what an interrupted run left
// (recoverLocked) and makes a slot nbship did not publish into a
// generation (adoptLocked), as Publish and Rollback begin. On an error the
// lock is released.
func (s *Slot) lockAdopted(ctx context.Context) (unlock func(), err error) {
	unlock, err = s.Lock(ctx)
	if err != nil {
		return nil, err
	}
	if err = s.recoverLocked(); err == nil {
		err = s.adoptLocked(ctx)
	}
	if err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// adoptLocked makes a slot nbship did not publish into a generation.
func (s *Slot) adoptLocked(ctx context.Context) error {
	st, target, err := s.state()
	if err != nil {
		return err
	}
	switch st {
	case slotMissing, slotOurs:
		return nil
	case slotOther:
		return fmt.Errorf("image: %s is neither a directory nor a symlink; move it away so nbship can publish", s.Path())
	case slotPlainDir:
		return s.adoptDir()
	}
	return s.adoptForeign(ctx, target)
}

func (s *Slot) adoptDir() error {
	gd, err := s.mkGensDir()
	if err != nil {
		return err
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	_, maxSeq, err := s.scan()
	if err != nil {
		return err
	}
	name := genName(maxSeq+1, fi.ModTime())
	gen, adopted := filepath.Join(gd, name), s.adoptedPath(name)
	if err := os.Symlink(s.adoptedLink(name), gen); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := os.Symlink(s.target(name), adopted); err != nil {
		os.Remove(gen)
		return fmt.Errorf("image: %w", err)
	}
	if err := exchange(s.Path(), adopted); err != nil {
		os.Remove(adopted)
		os.Remove(gen)
		return fmt.Errorf("image: cannot keep the plain directory %s as a generation: %w; the file system must support renameat2 RENAME_EXCHANGE (ext4, xfs, btrfs, tmpfs do), or move the directory away by hand", s.Path(), err)
	}
	if err := syncDir(gd); err != nil {
		return err
	}
	if err := syncDir(s.pxeDir); err != nil {
		return err
	}
	s.logf("kept the plain directory %s as generation %s (now %s)", s.Path(), name, adopted)
	return nil
}

func (s *Slot) adoptForeign(ctx context.Context, target string) error {
	// Only what resolves inside pxeDir or the Nix store is kept: the files
	// become a generation nginx serves, and a link elsewhere would publish
	// whatever it leads to.
	roots := confine.Roots(s.pxeDir, s.storeDir)
	src, inside, err := confine.Resolve(s.Path(), roots)
	if err != nil {
		s.logf("%s points to %s, which does not resolve (%v); replacing it", s.Path(), target, err)
		return nil
	}
	if !inside {
		return s.outside(s.Path(), src, "move the files into "+s.pxeDir+" or remove the link")
	}
	fi, err := os.Stat(src)
	if err != nil || !fi.IsDir() {
		s.logf("%s points to %s, not a directory; replacing it", s.Path(), target)
		return nil
	}
	fail := func(err error) error {
		return fmt.Errorf("image: cannot keep %s (-> %s) as a generation: %w; move it away to publish", s.Path(), target, err)
	}
	// Read through src as resolved and checked: a directory on the way
	// swapped for a symlink since fails here.
	d, err := confine.Open(src, unix.O_DIRECTORY)
	if err != nil {
		return fail(err)
	}
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return fail(err)
	}
	staged, err := s.Stage()
	if err != nil {
		return fail(err)
	}
	defer s.Discard(staged) // a no-op once renamed
	for _, e := range entries {
		link := filepath.Join(src, e.Name())
		p, inside, err := confine.Resolve(link, roots)
		if err != nil {
			s.logf("not keeping %s: %v", link, err)
			continue
		}
		if !inside {
			return s.outside(link, p, "move the file into "+s.pxeDir+" or remove the link")
		}
		if err := s.keepFile(p, filepath.Join(staged, e.Name())); errors.Is(err, errNotRegular) {
			s.logf("not keeping %s: not a regular file", link)
		} else if err != nil {
			return fail(err)
		}
	}
	sums, err := prepare(ctx, staged)
	if err != nil {
		return fail(err)
	}
	_, maxSeq, err := s.scan()
	if err != nil {
		return err
	}
	mtime := fi.ModTime()
	if li, err := os.Lstat(s.Path()); err == nil {
		mtime = li.ModTime() // when the old script made the link
	}
	name := genName(maxSeq+1, mtime)
	gd := s.GenerationsDir()
	if err := os.Rename(staged, filepath.Join(gd, name)); err != nil {
		return fail(err)
	}
	s.release(staged)
	if err := writeSums(gd, name, sums); err != nil {
		s.logf("%v", err)
	}
	if err := syncDir(gd); err != nil {
		return err
	}
	if err := s.point(name); err != nil {
		return err
	}
	s.logf("kept %s (-> %s) as generation %s", s.Path(), target, name)
	return nil
}

// outside is the refusal of a link that leads out of pxeDir and the store.
func (s *Slot) outside(link, to, what string) error {
	return fmt.Errorf("image: %s points outside pxeDir and the Nix store (-> %s); %s", link, to, what)
}

var errNotRegular = errors.New("not a regular file")

// keepFile puts the file at real path src into a staging directory as
// dst: a hard link when its inode is readable by all already (publishing
// then changes nothing about it), else a copy (a new inode, which
// publishing may make readable). The file is opened without following
// symlinks, so it is the one whose path was checked.
func (s *Slot) keepFile(src, dst string) error {
	if fi, err := os.Lstat(src); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return errNotRegular
	}
	// O_NONBLOCK: a FIFO swapped in meanwhile does not hang the open.
	in, err := confine.Open(src, unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errNotRegular
	}
	if fi.Mode().Perm()&0o444 == 0o444 {
		// The descriptor's inode itself, not whatever the path names now.
		proc := "/proc/self/fd/" + strconv.Itoa(int(in.Fd()))
		if unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW) == nil {
			return nil
		}
	}
	return copyFrom(in, fi, dst)
}

// copyFrom copies in (described by fi) to a new file dst, keeping its
// mtime.
func copyFrom(in *os.File, fi fs.FileInfo, dst string) error {
	if _, err := staging.CopyFile(dst, in, 0o644); err != nil {
		return err
	}
	os.Chtimes(dst, time.Time{}, fi.ModTime())
	return nil
}
