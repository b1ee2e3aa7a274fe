package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nbship/nbship/internal/staging"
)

// CopyStats says how an image's files got into a staging directory.
type CopyStats struct {
	Files  int   // files of the image
	Copied int   // files whose bytes were copied
	Linked int   // files hard-linked from the current generation
	Bytes  int64 // bytes copied
	Total  int64 // bytes of all the files
}

// CopyImage fills staged (from Stage) with the image in directory src,
// such as a Nix build output on this host. Every entry of src must be, or
// be a symlink to, a regular file: links are followed, because store
// outputs link into other store paths. A file whose SHA-256 the current
// generation has (see Have) is hard-linked from there when the link works
// (same file system, allowed), else copied. A copied file is hashed again
// as it is written and must match, so a source that changes under the copy
// is refused.
//
// CopyImage only checks that the entries are files; Publish verifies the
// image against the slot's profile. On error, staged may hold some of the
// files: Discard it (Publish would refuse it anyway).
func (s *Slot) CopyImage(ctx context.Context, staged, src string) (CopyStats, error) {
	var st CopyStats
	dir, err := s.checkStaged(staged)
	if err != nil {
		return st, err
	}
	fi, err := os.Stat(src)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return st, fmt.Errorf("image: %s does not exist; give the directory of the build output", src)
	case err != nil:
		return st, fmt.Errorf("image: %w", err)
	case !fi.IsDir():
		return st, fmt.Errorf("image: %s is not a directory; give the directory that holds %s, %s and %s", src, s.profile.Kernel, InitrdName, ScriptName)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return st, fmt.Errorf("image: %w", err)
	}
	if len(entries) == 0 {
		return st, fmt.Errorf("image: %s is empty; give the directory that holds %s, %s and %s", src, s.profile.Kernel, InitrdName, ScriptName)
	}
	have, err := s.Have()
	if err != nil {
		s.logf("copying every file, not reusing the current generation's: %v", err)
		have = nil
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("image: %w", err)
		}
		from := filepath.Join(src, e.Name())
		to := filepath.Join(dir, e.Name())
		fi, err := os.Stat(from)
		switch {
		case err != nil && e.Type()&fs.ModeSymlink != 0:
			return st, fmt.Errorf("image: %s is a symlink that does not resolve: %w", from, err)
		case err != nil:
			return st, fmt.Errorf("image: %w", err)
		case fi.IsDir():
			return st, fmt.Errorf("image: %s is a directory; an image is flat, with its files beside %s", from, ScriptName)
		case !fi.Mode().IsRegular():
			return st, fmt.Errorf("image: %s is not a regular file (%s); an image holds regular files only", from, fi.Mode().Type())
		}
		sum, err := hashFile(from, false)
		if err != nil {
			return st, err
		}
		st.Files++
		st.Total += sum.size
		if p, ok := have[sum.sum]; ok && os.Link(p, to) == nil {
			st.Linked++
			continue
		}
		n, err := copyChecked(ctx, from, to, sum.sum)
		if err != nil {
			return st, err
		}
		st.Copied++
		st.Bytes += n
	}
	return st, nil
}

// copyChecked copies from to a new file to, which must come out with the
// SHA-256 want; on any failure to is removed.
func copyChecked(ctx context.Context, from, to string, want [32]byte) (int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return 0, fmt.Errorf("image: %w", err)
	}
	defer in.Close()
	h := sha256.New()
	n, err := staging.CopyFile(to, io.TeeReader(ctxReader{ctx, in}, h), 0o644)
	if err == nil && !bytes.Equal(h.Sum(nil), want[:]) {
		os.Remove(to)
		err = fmt.Errorf("%s changed while it was copied; is something still writing it?", from)
	}
	if err != nil {
		return 0, fmt.Errorf("image: copy %s: %w", from, err)
	}
	return n, nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
