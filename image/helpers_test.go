package image

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbship/nbship/internal/testbin"
)

// Debian's netboot kernels and initrds (debian-installer-12-netboot-arm64
// and -amd64): real files for the architecture checks.
var debian = map[string]struct{ kernel, initrd string }{
	Aarch64: {
		"/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/linux",
		"/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/initrd.gz",
	},
	X86_64: {
		"/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux",
		"/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/initrd.gz",
	},
}

// needRig skips (or, with NBSHIP_REQUIRE_RIG=1, fails) when path is missing.
func needRig(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		testbin.Missing(t, "%s missing (install Debian package %s): %v", path, pkg, err)
	}
}

// debianFiles returns the real kernel and initrd of system.
func debianFiles(t *testing.T, system string) (kernel, initrd string) {
	t.Helper()
	f := debian[system]
	pkg := map[string]string{Aarch64: "debian-installer-12-netboot-arm64", X86_64: "debian-installer-12-netboot-amd64"}[system]
	needRig(t, f.kernel, pkg)
	needRig(t, f.initrd, pkg)
	return f.kernel, f.initrd
}

// place puts src at dst: a hard link, or a copy across file systems.
func place(t *testing.T, src, dst string) {
	t.Helper()
	if os.Link(src, dst) == nil {
		return
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err == nil {
		err = copyFrom(in, fi, dst)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

var (
	arm = Profile{"c2.large.arm", Aarch64, "Image", "ttyAMA0"}
	x86 = Profile{"m2.xlarge.x86", X86_64, "bzImage", "ttyS1"}
)

// script is a netboot.ipxe as NixOS writes it, with a tag in a comment.
func script(kernel, tag string) []byte {
	return []byte(fmt.Sprintf("#!ipxe\n# generation %s\nkernel %s init=/nix/store/x-nixos-system/init initrd=initrd loglevel=4 ${cmdline}\ninitrd initrd\nboot\n", tag, kernel))
}

// fakeKernel is a kernel header of system (only the magic is real) with
// tag after it, for the generation tests; the architecture tests use
// Debian's kernels.
func fakeKernel(system, tag string) []byte {
	k := kernelKinds[system]
	b := make([]byte, 0x240)
	copy(b[k.offset:], k.magic)
	return append(b, "tag "+tag...)
}

// writeImage writes a small valid image for p into dir, every file
// carrying tag.
func writeImage(t *testing.T, dir string, p Profile, tag string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, p.Kernel), fakeKernel(p.System, tag))
	writeFile(t, filepath.Join(dir, InitrdName), append([]byte("\x1f\x8b\x08\x00tag "), tag...))
	writeFile(t, filepath.Join(dir, ScriptName), script(p.Kernel, tag))
}

// tags reads the tag of each of the three files of an image in dir.
func tags(dir string, p Profile) ([3]string, error) {
	var out [3]string
	for i, name := range []string{ScriptName, p.Kernel, InitrdName} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return out, err
		}
		out[i] = tagOf(b)
	}
	return out, nil
}

func tagOf(b []byte) string {
	if i := bytes.Index(b, []byte("# generation ")); i >= 0 {
		rest := b[i+len("# generation "):]
		return string(rest[:bytes.IndexByte(rest, '\n')])
	}
	if i := bytes.LastIndex(b, []byte("tag ")); i >= 0 {
		return string(b[i+4:])
	}
	return ""
}

// newc is a tiny cpio "newc" writer for initrd samples.
func newc(files map[string]string) []byte {
	var b bytes.Buffer
	ino := 1
	entry := func(name string, mode int, data string) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		b.WriteString(name + "\x00")
		pad(&b)
		b.WriteString(data)
		pad(&b)
	}
	for name, data := range files {
		entry(name, 0o100644, data)
	}
	entry("TRAILER!!!", 0, "")
	return b.Bytes()
}

func pad(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

func readAll(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantErr(t *testing.T, err error, substrs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("error = nil, want one containing %q", substrs)
	}
	for _, s := range substrs {
		if !strings.Contains(err.Error(), s) {
			t.Fatalf("error = %q, want it to contain %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error = %q, want one line", err)
	}
}
