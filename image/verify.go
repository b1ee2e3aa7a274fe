package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// InitrdName is the initrd file every generation has.
const InitrdName = "initrd"

// VerifyError is an image that must not be published into its slot. Its
// message is one line naming the file and what is wrong with it.
type VerifyError struct {
	Path string // the file (or directory) at fault
	Msg  string // follows the path: "is an x86_64 bzImage, but …"
}

func (e *VerifyError) Error() string { return "image: " + e.Path + " " + e.Msg }

// Refusal marks a VerifyError as a refusal of what was sent: the receiver
// exits with the status that tells the controller not to send it again.
func (e *VerifyError) Refusal() {}

func refuse(path, format string, a ...any) error {
	return &VerifyError{Path: path, Msg: fmt.Sprintf(format, a...)}
}

// Summary is what Inspect found in a valid image directory.
type Summary struct {
	Dir    string `json:"dir"`
	System string `json:"system"` // of the kernel: aarch64-linux, x86_64-linux
	Kernel string `json:"kernel"` // its file name
	Initrd string `json:"initrd"` // format of the initrd file: gzip, zstd, xz, lz4, cpio
	Script Script `json:"-"`
	Files  int    `json:"files"`
	Bytes  int64  `json:"bytes"`
}

// Verify checks that dir holds a netboot image that boots instances of p:
// a kernel of p's architecture, an initrd in a format Linux unpacks, and a
// netboot.ipxe that loads files beside it. The directory must be flat and
// hold regular files only. The error is a *VerifyError when the image is at
// fault.
func Verify(dir string, p Profile) error {
	_, err := Inspect(dir, p)
	return err
}

// Inspect is Verify that also says what it found.
func Inspect(dir string, p Profile) (Summary, error) {
	sum := Summary{Dir: dir}
	want, ok := kernelKinds[p.System]
	if !ok || p.Kernel != want.file {
		return sum, fmt.Errorf("image: profile %s has system %q and kernel %q; nbship checks %s (Image) and %s (bzImage)", p.Name, p.System, p.Kernel, Aarch64, X86_64)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return sum, refuse(dir, "does not exist")
		}
		return sum, fmt.Errorf("image: %w", err)
	}
	if !fi.IsDir() {
		return sum, refuse(dir, "is not a directory; give the directory that holds %s, %s and %s", p.Kernel, InitrdName, ScriptName)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return sum, fmt.Errorf("image: %w", err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch t := e.Type(); {
		case t&fs.ModeSymlink != 0:
			return sum, refuse(path, "is a symlink; a generation holds regular files only, copy the file it points to")
		case t.IsDir():
			return sum, refuse(path, "is a directory; a generation is flat, put its files beside %s", ScriptName)
		case !t.IsRegular():
			return sum, refuse(path, "is not a regular file; remove it")
		}
		info, err := e.Info()
		if err != nil {
			return sum, fmt.Errorf("image: %w", err)
		}
		sum.Files++
		sum.Bytes += info.Size()
	}

	if err := checkKernel(dir, p); err != nil {
		return sum, err
	}
	sum.System, sum.Kernel = p.System, p.Kernel

	format, err := checkInitrd(filepath.Join(dir, InitrdName))
	if err != nil {
		return sum, err
	}
	sum.Initrd = format

	script, err := checkScript(dir, p)
	if err != nil {
		return sum, err
	}
	sum.Script = script
	return sum, nil
}

type kernelKind struct {
	file   string // Image, bzImage
	desc   string // "an aarch64 Image"
	offset int64  // of the magic
	magic  string
}

var kernelKinds = map[string]kernelKind{
	Aarch64: {"Image", "an aarch64 Image", 0x38, "ARMd"},
	X86_64:  {"bzImage", "an x86_64 bzImage", 0x202, "HdrS"},
}

// KernelSystem reads the header of a kernel file and returns the system it
// boots (Aarch64 for an arm64 Image, magic "ARMd" at 0x38; X86_64 for a
// bzImage, "HdrS" at 0x202), or "" when it is neither.
func KernelSystem(r io.ReaderAt) (string, error) {
	var hdr [0x206]byte
	n, err := r.ReadAt(hdr[:], 0)
	if err != nil && err != io.EOF {
		return "", err
	}
	for system, k := range kernelKinds {
		end := k.offset + int64(len(k.magic))
		if int64(n) >= end && string(hdr[k.offset:end]) == k.magic {
			return system, nil
		}
	}
	return "", nil
}

func kernelFileSystem(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return KernelSystem(f)
}

func checkKernel(dir string, p Profile) error {
	want := kernelKinds[p.System]
	path := filepath.Join(dir, p.Kernel)
	sys, err := kernelFileSystem(path)
	if errors.Is(err, fs.ErrNotExist) {
		// The other architecture's kernel in its place says more than "missing".
		for other, k := range kernelKinds {
			if other == p.System {
				continue
			}
			op := filepath.Join(dir, k.file)
			if osys, err := kernelFileSystem(op); err == nil && osys != "" {
				return refuse(op, "is %s, but slot %s needs %s", kernelKinds[osys].desc, p.Name, want.desc)
			}
		}
		return refuse(path, "is missing; slot %s needs %s (the kernel of its netboot build)", p.Name, want.desc)
	}
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	switch sys {
	case p.System:
		return nil
	case "":
		return refuse(path, "is not %s (no %q at offset %#x); copy the kernel of the %s netboot build", want.desc, want.magic, want.offset, p.System)
	default:
		return refuse(path, "is %s, but slot %s needs %s", kernelKinds[sys].desc, p.Name, want.desc)
	}
}

var initrdMagics = []struct {
	format string
	magic  string
}{
	{"gzip", "\x1f\x8b"},
	{"zstd", "\x28\xb5\x2f\xfd"},
	{"xz", "\xfd7zXZ\x00"},
	{"lz4", "\x02\x21\x4c\x18"}, // legacy frame, what the kernel's lz4 initrds use
	{"lz4", "\x04\x22\x4d\x18"}, // frame format
	{"cpio", "070701"},          // newc
	{"cpio", "070702"},          // newc with checksums
}

// InitrdFormat names the format of an initrd from its first bytes: gzip,
// zstd, xz, lz4 or cpio, or "" when it is none of them.
func InitrdFormat(head []byte) string {
	for _, m := range initrdMagics {
		if bytes.HasPrefix(head, []byte(m.magic)) {
			return m.format
		}
	}
	return ""
}

func checkInitrd(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", refuse(path, "is missing; copy the initrd of the netboot build")
	}
	if err != nil {
		return "", fmt.Errorf("image: %w", err)
	}
	defer f.Close()
	var head [6]byte
	n, err := io.ReadFull(f, head[:])
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", fmt.Errorf("image: %w", err)
	}
	if n == 0 {
		return "", refuse(path, "is empty; copy the initrd of the netboot build")
	}
	if format := InitrdFormat(head[:n]); format != "" {
		return format, nil
	}
	return "", refuse(path, "is not an initrd (starts % x; want gzip, zstd, xz, lz4 or cpio); copy the initrd of the netboot build", head[:n])
}

func checkScript(dir string, p Profile) (Script, error) {
	path := filepath.Join(dir, ScriptName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Script{}, refuse(path, "is missing; copy the netboot.ipxe of the netboot build")
	}
	if err != nil {
		return Script{}, fmt.Errorf("image: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxScript+1))
	f.Close()
	if err != nil {
		return Script{}, fmt.Errorf("image: %w", err)
	}
	s, err := ParseIPXE(data)
	if err != nil {
		var pe *ParseError
		if errors.As(err, &pe) {
			if pe.Line > 0 {
				return s, refuse(path, "line %d: %s", pe.Line, pe.Msg)
			}
			return s, refuse(path, "%s", strings.TrimPrefix(pe.Msg, "script "))
		}
		return s, fmt.Errorf("image: %s: %w", path, err)
	}
	kernel, err := scriptFile(dir, path, s.Kernel)
	if err != nil {
		return s, err
	}
	if kernel != p.Kernel {
		return s, refuse(path, "line %d: boots %s, but slot %s needs %s (%s); was another instance's image sent here?", s.Kernel.Line, kernel, p.Name, kernelKinds[p.System].desc, p.Kernel)
	}
	for _, r := range s.Initrds {
		name, err := scriptFile(dir, path, r)
		if err != nil {
			return s, err
		}
		if _, err := checkInitrd(filepath.Join(dir, name)); err != nil {
			return s, err
		}
	}
	if len(s.Initrds) == 0 {
		return s, refuse(path, "loads no initrd; add a line: initrd %s", InitrdName)
	}
	return s, nil
}

// scriptFile checks that the file r loads lies beside the script.
func scriptFile(dir, script string, r Ref) (string, error) {
	name, err := r.File()
	if err != nil {
		return "", refuse(script, "line %d: %v", r.Line, err)
	}
	fi, err := os.Lstat(filepath.Join(dir, name))
	if err != nil || !fi.Mode().IsRegular() {
		return "", refuse(script, "line %d: %s %s is not in the generation; copy it beside %s", r.Line, r.Cmd, name, ScriptName)
	}
	return name, nil
}
