package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
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
// A symlink into the Nix store (nix-store --add-root) is kept by copying
// (hard-linking where allowed) its files into a generation and pointing
// the slot at it, one rename.

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
	src, err := filepath.EvalSymlinks(s.Path())
	if err != nil {
		s.logf("%s points to %s, which does not resolve (%v); replacing it", s.Path(), target, err)
		return nil
	}
	fi, err := os.Stat(src)
	if err != nil || !fi.IsDir() {
		s.logf("%s points to %s, not a directory; replacing it", s.Path(), target)
		return nil
	}
	fail := func(err error) error {
		return fmt.Errorf("image: cannot keep %s (-> %s) as a generation: %w; move it away to publish", s.Path(), target, err)
	}
	staged, err := s.Stage()
	if err != nil {
		return fail(err)
	}
	defer s.Discard(staged) // a no-op once renamed
	entries, err := os.ReadDir(src)
	if err != nil {
		return fail(err)
	}
	for _, e := range entries {
		p, err := filepath.EvalSymlinks(filepath.Join(src, e.Name()))
		if err != nil {
			s.logf("not keeping %s: %v", filepath.Join(src, e.Name()), err)
			continue
		}
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			s.logf("not keeping %s: not a regular file", filepath.Join(src, e.Name()))
			continue
		}
		if err := linkOrCopy(p, filepath.Join(staged, e.Name())); err != nil {
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

// linkOrCopy hard-links src to dst, or copies it where a link is not
// allowed (another file system, protected_hardlinks).
func linkOrCopy(src, dst string) error {
	if os.Link(src, dst) == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if fi, err := in.Stat(); err == nil {
		os.Chtimes(dst, time.Time{}, fi.ModTime())
	}
	return out.Close()
}
