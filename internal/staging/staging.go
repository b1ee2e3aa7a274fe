// Package staging makes the directories a writer fills before renaming
// them into place, and tells a live writer's from a dead one's: the writer
// holds an flock on its directory from the moment the directory has its
// staging name until the writer is done or exits, so an unlocked staging
// directory was left by a process that died (SIGKILL, power loss) and may
// be removed by anyone at once. CopyFile fills one with a file copied
// from elsewhere.
//
// Image slots (image.Slot.Stage) and `recv --dest` (.DEST.nbship-recv-*)
// use it.
package staging

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// StaleAge is how old a directory still under its creating name must be
// before it counts as left behind: it is unlocked for an instant by design.
const StaleAge = time.Hour

// Dir is a staging directory this process holds.
type Dir struct {
	Path string

	once sync.Once
	lock *os.File
}

// Make creates an empty directory parent/prefix+RANDOM (mode 0700) and
// locks it. It is made under parent/creating+RANDOM, locked, then renamed,
// so a directory named prefix* is locked from its first moment. Errors are
// the os package's, naming the path.
func Make(parent, creating, prefix string) (*Dir, error) {
	tmp, err := os.MkdirTemp(parent, creating)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(tmp)
	if err == nil {
		if err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			err = &os.PathError{Op: "flock", Path: tmp, Err: err}
		}
	}
	if err != nil {
		os.Remove(tmp)
		return nil, err
	}
	dir := filepath.Join(parent, prefix+strings.TrimPrefix(filepath.Base(tmp), creating))
	if err := os.Rename(tmp, dir); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, err
	}
	return &Dir{Path: dir, lock: f}, nil
}

// Release drops the lock; the directory stays, and counts as a dead
// writer's from now on. Calling it again does nothing.
func (d *Dir) Release() {
	d.once.Do(func() { d.lock.Close() })
}

// Stale reports whether dir is a directory that no process holds (see
// Make).
func Stale(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
}

// Sweep removes what dead writers left in parent: directories named
// prefix* that no process holds, and creating* ones older than StaleAge.
// It returns the paths it removed; one it cannot remove is left for the
// next sweep.
func Sweep(parent, creating, prefix string) []string {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		n, p := e.Name(), filepath.Join(parent, e.Name())
		switch {
		case strings.HasPrefix(n, prefix):
			if !Stale(p) {
				continue
			}
		case strings.HasPrefix(n, creating):
			if fi, err := os.Lstat(p); err != nil || !fi.IsDir() || time.Since(fi.ModTime()) <= StaleAge {
				continue
			}
		default:
			continue
		}
		if os.RemoveAll(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}

// CopyFile writes what r gives to a new file dst (created with perm, less
// the umask; an existing dst is an error) and returns the bytes written.
// On failure dst is removed.
func CopyFile(dst string, r io.Reader, perm os.FileMode) (int64, error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return n, nil
}
