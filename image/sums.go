package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fileSum is a file's SHA-256 and the size and mtime it had when hashed.
type fileSum struct {
	sum   [32]byte
	size  int64
	mtime int64 // UnixNano
}

// prepare makes dir and its files readable by all, hashes and syncs the
// files, and syncs dir.
func prepare(ctx context.Context, dir string) (map[string]fileSum, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	sums := map[string]fileSum{}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		p := filepath.Join(dir, e.Name())
		fsum, err := hashFile(p, true)
		if errors.Is(err, errShared) {
			// Another name has this inode (a hard link from outside the
			// generation): give the generation a copy of its own to open up.
			if err := unshare(p); err != nil {
				return nil, fmt.Errorf("image: %w", err)
			}
			fsum, err = hashFile(p, true)
		}
		if err != nil {
			return nil, err
		}
		sums[e.Name()] = fsum
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return sums, syncDir(dir)
}

// errShared is a file that publishing would make readable by all, but whose
// inode has other links: changing its mode would open up those too.
var errShared = errors.New("image: file has other hard links")

// hashFile hashes a regular file; with publish, it also makes it readable
// by all (only adding read bits) and syncs it. A file that is not readable
// by all and has other hard links is left alone: errShared.
func hashFile(path string, publish bool) (fileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileSum{}, fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileSum{}, fmt.Errorf("image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fileSum{}, fmt.Errorf("image: %s is not a regular file", path)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileSum{}, fmt.Errorf("image: %w", err)
	}
	if publish {
		if fi.Mode().Perm()&0o444 != 0o444 {
			if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink > 1 {
				return fileSum{}, errShared
			}
			if err := f.Chmod(fi.Mode().Perm() | 0o444); err != nil {
				return fileSum{}, fmt.Errorf("image: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			return fileSum{}, fmt.Errorf("image: sync %s: %w", path, err)
		}
	}
	var fsum fileSum
	copy(fsum.sum[:], h.Sum(nil))
	fsum.size, fsum.mtime = fi.Size(), fi.ModTime().UnixNano()
	return fsum, nil
}

// unshare replaces the file p by a copy of it: same bytes, mode and mtime,
// a new inode with no other link.
func unshare(p string) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".copy-")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name()) // fails once renamed
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(fi.Mode().Perm())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chtimes(out.Name(), time.Time{}, fi.ModTime())
	}
	if err == nil {
		err = os.Rename(out.Name(), p)
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", p, err)
	}
	return nil
}

// The hash file GEN.sums has one line per file of GEN:
// "SHA256HEX SIZE MTIME_UNIX_NANO QUOTED_NAME". A line whose size or mtime
// no longer match the file is ignored and the file hashed again.

func writeSums(gd, name string, sums map[string]fileSum) error {
	f, err := os.CreateTemp(gd, "."+name+sumsSuffix+".tmp-")
	if err != nil {
		return fmt.Errorf("image: write hashes of %s: %w", name, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(formatSums(sums))
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(gd, name+sumsSuffix))
	}
	if err != nil {
		return fmt.Errorf("image: write hashes of %s: %w", name, err)
	}
	return nil
}

// formatSums is the hash file's text: a line per file, sorted by name.
func formatSums(sums map[string]fileSum) []byte {
	names := make([]string, 0, len(sums))
	for n := range sums {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		fsum := sums[n]
		fmt.Fprintf(&b, "%x %d %d %s\n", fsum.sum, fsum.size, fsum.mtime, strconv.Quote(n))
	}
	return b.Bytes()
}

func readSums(path string) map[string]fileSum {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	return parseSums(data)
}

// parseSums reads a hash file; lines it cannot read are left out, so
// their files are hashed again.
func parseSums(data []byte) map[string]fileSum {
	sums := map[string]fileSum{}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 {
			continue
		}
		b, err1 := hex.DecodeString(f[0])
		size, err2 := strconv.ParseInt(f[1], 10, 64)
		mtime, err3 := strconv.ParseInt(f[2], 10, 64)
		name, err4 := strconv.Unquote(f[3])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || len(b) != 32 {
			continue
		}
		var fsum fileSum
		copy(fsum.sum[:], b)
		fsum.size, fsum.mtime = size, mtime
		sums[name] = fsum
	}
	return sums
}

// Have maps the SHA-256 of each file of the current generation to its
// absolute path (inside the generation directory, not through the slot
// symlink), so a receiver can hard-link files it already has into a
// staging directory instead of receiving them again. The hashes come from
// the generation's hash file, written at publish; files it does not cover,
// or that changed since, are hashed now and the file rewritten. A slot not
// yet published by nbship has nothing: the map is empty.
//
// A path may vanish before it is linked (another publish's GC); treat a
// failed os.Link as a file not had.
func (s *Slot) Have() (map[[32]byte]string, error) {
	have := map[[32]byte]string{}
	cur, err := s.Current()
	if err != nil || cur == "" {
		return have, err
	}
	gd := s.GenerationsDir()
	dir := filepath.Join(gd, cur)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return have, fmt.Errorf("image: %w", err)
	}
	cached := readSums(filepath.Join(gd, cur+sumsSuffix))
	sums := map[string]fileSum{}
	stale := cached == nil
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		fsum, ok := cached[e.Name()]
		if !ok || fsum.size != info.Size() || fsum.mtime != info.ModTime().UnixNano() {
			if fsum, err = hashFile(p, false); err != nil {
				return have, err
			}
			stale = true
		}
		sums[e.Name()] = fsum
		if _, dup := have[fsum.sum]; !dup {
			have[fsum.sum] = p
		}
	}
	if stale || len(cached) != len(sums) {
		if err := writeSums(gd, cur, sums); err != nil {
			s.logf("%v", err)
		}
	}
	return have, nil
}
