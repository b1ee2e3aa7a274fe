package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// storeLike writes an image for p into a new directory laid out as a Nix
// build output often is: the kernel and initrd are symlinks into other
// directories ("store paths"), the script is a file.
func storeLike(t *testing.T, p Profile, tag string) string {
	t.Helper()
	root := t.TempDir()
	files := filepath.Join(root, "files")
	out := filepath.Join(root, "out")
	for _, d := range []string{files, out} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeImage(t, files, p, tag)
	for _, name := range []string{p.Kernel, InitrdName} {
		if err := os.Symlink(filepath.Join(files, name), filepath.Join(out, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(filepath.Join(files, ScriptName), filepath.Join(out, ScriptName)); err != nil {
		t.Fatal(err)
	}
	return out
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestCopyImage(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSlot(t.TempDir(), x86)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(src string) (CopyStats, Generation) {
		t.Helper()
		dir, err := s.Stage()
		if err != nil {
			t.Fatal(err)
		}
		st, err := s.CopyImage(ctx, dir, src)
		if err != nil {
			s.Discard(dir)
			t.Fatalf("CopyImage(%s) = %v", src, err)
		}
		g, err := s.Publish(ctx, dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		return st, g
	}

	src1 := storeLike(t, x86, "1")
	st, g1 := publish(src1)
	if st.Files != 3 || st.Copied != 3 || st.Linked != 0 || st.Bytes != st.Total || st.Total == 0 {
		t.Errorf("first publish: %+v, want 3 files copied", st)
	}
	// Symlinks were followed: the generation holds the files themselves.
	if got, err := tags(g1.Dir, x86); err != nil || got != [3]string{"1", "1", "1"} {
		t.Errorf("generation 1 holds %v, %v; want tag 1 in every file", got, err)
	}
	for _, name := range []string{x86.Kernel, InitrdName, ScriptName} {
		fi, err := os.Lstat(filepath.Join(g1.Dir, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o444 != 0o444 {
			t.Errorf("%s in the generation: %v, %v; want a world-readable regular file", name, fi.Mode(), err)
		}
	}

	// The same kernel and initrd with a new script: two links, one copy.
	src2 := storeLike(t, x86, "1")
	script2 := script(x86.Kernel, "2")
	writeFile(t, filepath.Join(src2, ScriptName), script2)
	st, g2 := publish(src2)
	if st.Files != 3 || st.Copied != 1 || st.Linked != 2 || st.Bytes != int64(len(script2)) {
		t.Errorf("second publish: %+v, want 2 files linked and only the script copied", st)
	}
	for _, name := range []string{x86.Kernel, InitrdName} {
		if inode(t, filepath.Join(g1.Dir, name)) != inode(t, filepath.Join(g2.Dir, name)) {
			t.Errorf("%s of generation 2 is not a hard link to generation 1's", name)
		}
	}
	if got, _ := tags(g2.Dir, x86); got != [3]string{"2", "1", "1"} {
		t.Errorf("generation 2 holds tags %v, want [2 1 1]", got)
	}
}

func TestCopyImageRefuses(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSlot(t.TempDir(), x86)
	if err != nil {
		t.Fatal(err)
	}
	good := func() string {
		d := t.TempDir()
		writeImage(t, d, x86, "x")
		return d
	}
	tests := []struct {
		name string
		src  func() string
		want string
	}{
		{"missing", func() string { return filepath.Join(t.TempDir(), "nope") }, "does not exist"},
		{"file", func() string { return filepath.Join(good(), ScriptName) }, "is not a directory"},
		{"empty", func() string { return t.TempDir() }, "is empty"},
		{"subdirectory", func() string {
			d := good()
			os.Mkdir(filepath.Join(d, "nix-support"), 0o755)
			return d
		}, "nix-support is a directory; an image is flat"},
		{"dangling link", func() string {
			d := good()
			os.Symlink("/nonexistent/initrd", filepath.Join(d, "extra"))
			return d
		}, "extra is a symlink that does not resolve"},
		{"fifo", func() string {
			d := good()
			if err := syscall.Mkfifo(filepath.Join(d, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
			return d
		}, "pipe is not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, err := s.Stage()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Discard(dir)
			_, err = s.CopyImage(ctx, dir, tt.src())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CopyImage = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := s.CopyImage(ctx, good(), good()); err == nil || !strings.Contains(err.Error(), "not a staging directory") {
		t.Errorf("CopyImage into a directory not from Stage = %v", err)
	}
	// Nothing was published by any of it.
	if gens, err := s.List(); err != nil || len(gens) != 0 {
		t.Errorf("List = %v, %v; want no generations", gens, err)
	}
}
