// Package confine follows symlinks only into trees the caller allows, and
// opens files by paths in which no symlink is followed, so that the file
// read is the one whose resolved path was checked, even if a directory on
// the way is swapped for a symlink in between.
package confine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Roots returns the real paths (symlinks resolved) of dirs, leaving out
// those that do not exist (a host without a Nix store).
func Roots(dirs ...string) []string {
	var roots []string
	for _, d := range dirs {
		if d == "" {
			continue
		}
		abs, err := filepath.Abs(d)
		if err != nil {
			continue
		}
		if r, err := filepath.EvalSymlinks(abs); err == nil {
			roots = append(roots, r)
		}
	}
	return roots
}

// Within reports whether the clean absolute path p is root or lies below it.
func Within(p, root string) bool {
	if p == root {
		return true
	}
	if root == "/" {
		return strings.HasPrefix(p, "/")
	}
	return strings.HasPrefix(p, root+"/")
}

// Resolve returns the real absolute path of p, and whether it lies within
// one of roots (real paths, from Roots).
func Resolve(p string, roots []string) (real string, inside bool, err error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false, err
	}
	real, err = filepath.EvalSymlinks(abs)
	if err != nil {
		return "", false, err
	}
	for _, r := range roots {
		if Within(real, r) {
			return real, true, nil
		}
	}
	return real, false, nil
}

// Open opens p (os.O_RDONLY, plus flags such as unix.O_DIRECTORY) without
// following any symlink on the way: a path that has one fails (ELOOP).
// Give it a real path, from Resolve. Where openat2 is missing (kernels
// before 5.6, qemu-user), the last component is opened with O_NOFOLLOW and
// the path is resolved again afterwards: it must still be itself and lead
// to the file opened.
func Open(p string, flags int) (*os.File, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_RDONLY | unix.O_CLOEXEC), Resolve: unix.RESOLVE_NO_SYMLINKS}
	fd, err := unix.Openat2(unix.AT_FDCWD, p, &how)
	if err == nil {
		return os.NewFile(uintptr(fd), p), nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return openChecked(p, flags)
}

// openChecked is Open without openat2.
func openChecked(p string, flags int) (*os.File, error) {
	fd, err := unix.Open(p, flags|unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	abs, err := filepath.Abs(p)
	if err == nil {
		var real string
		if real, err = filepath.EvalSymlinks(abs); err == nil && real != abs {
			err = unix.ELOOP
		}
	}
	if err == nil {
		var at, now unix.Stat_t
		if err = unix.Fstat(fd, &at); err == nil {
			if err = unix.Stat(p, &now); err == nil && (at.Dev != now.Dev || at.Ino != now.Ino) {
				err = unix.ELOOP
			}
		}
	}
	if err != nil {
		f.Close()
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	return f, nil
}
