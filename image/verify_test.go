package image

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestVerifyDebianKernels(t *testing.T) {
	armKernel, armInitrd := debianFiles(t, Aarch64)
	x86Kernel, x86Initrd := debianFiles(t, X86_64)
	tests := []struct {
		name   string
		slot   Profile
		kernel string // real kernel to use
		initrd string
		as     string // its file name in the image
		script string // kernel named in netboot.ipxe
		want   []string
	}{
		{"arm Image in arm slot", arm, armKernel, armInitrd, "Image", "Image", nil},
		{"x86 bzImage in x86 slot", x86, x86Kernel, x86Initrd, "bzImage", "bzImage", nil},
		{"arm Image in other arm slot", Profile{"c1.large.arm", Aarch64, "Image", "ttyAMA0"}, armKernel, armInitrd, "Image", "Image", nil},
		{"x86 bzImage in arm slot", arm, x86Kernel, x86Initrd, "bzImage", "Image",
			[]string{"/bzImage is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image"}},
		{"x86 kernel named Image in arm slot", arm, x86Kernel, x86Initrd, "Image", "Image",
			[]string{"/Image is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image"}},
		{"arm Image in x86 slot", x86, armKernel, armInitrd, "Image", "bzImage",
			[]string{"/Image is an aarch64 Image, but slot m2.xlarge.x86 needs an x86_64 bzImage"}},
		{"arm kernel named bzImage in x86 slot", x86, armKernel, armInitrd, "bzImage", "bzImage",
			[]string{"/bzImage is an aarch64 Image, but slot m2.xlarge.x86 needs an x86_64 bzImage"}},
		{"initrd as kernel", arm, armInitrd, armInitrd, "Image", "Image",
			[]string{"/Image is not an aarch64 Image", `no "ARMd" at offset 0x38`}},
		{"kernel as initrd", x86, x86Kernel, x86Kernel, "bzImage", "bzImage",
			[]string{"/initrd is not an initrd", "want gzip, zstd, xz, lz4 or cpio"}},
		{"script boots the other kernel", arm, armKernel, armInitrd, "Image", "bzImage",
			[]string{"netboot.ipxe line 3: kernel bzImage is not in the generation"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			place(t, tt.kernel, filepath.Join(dir, tt.as))
			place(t, tt.initrd, filepath.Join(dir, InitrdName))
			writeFile(t, filepath.Join(dir, ScriptName), script(tt.script, "1"))
			sum, err := Inspect(dir, tt.slot)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Inspect(%s) = %v, want nil", tt.slot.Name, err)
				}
				if sum.System != tt.slot.System || sum.Kernel != tt.slot.Kernel || sum.Initrd != "gzip" || sum.Files != 3 {
					t.Errorf("Inspect(%s) = %+v, want system %s, kernel %s, gzip initrd, 3 files", tt.slot.Name, sum, tt.slot.System, tt.slot.Kernel)
				}
				return
			}
			wantErr(t, err, tt.want...)
			var ve *VerifyError
			if !errors.As(err, &ve) {
				t.Errorf("Inspect error %T, want *VerifyError", err)
			}
		})
	}
}

func TestKernelSystemDebian(t *testing.T) {
	for system := range debian {
		kernel, _ := debianFiles(t, system)
		f, err := os.Open(kernel)
		if err != nil {
			t.Fatal(err)
		}
		got, err := KernelSystem(f)
		f.Close()
		if err != nil || got != system {
			t.Errorf("KernelSystem(%s) = %q, %v, want %q", kernel, got, err, system)
		}
	}
}

func TestInitrdFormats(t *testing.T) {
	_, gz := debianFiles(t, X86_64)
	cpio := newc(map[string]string{"init": "#!/bin/sh\nexec /bin/sh\n"})
	var zst bytes.Buffer
	zw, err := zstd.NewWriter(&zst)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(cpio)
	zw.Close()
	tests := []struct {
		name string
		data []byte
		want string // format, or "" for refused
	}{
		{"debian initrd.gz", nil, "gzip"}, // linked from gz
		{"zstd", zst.Bytes(), "zstd"},
		{"xz", []byte("\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46"), "xz"},
		{"lz4 legacy", []byte("\x02\x21\x4c\x18\x00\x00\x00\x00"), "lz4"},
		{"lz4 frame", []byte("\x04\x22\x4d\x18\x64\x40\xa7"), "lz4"},
		{"cpio newc", cpio, "cpio"},
		{"cpio newc crc", append([]byte("070702"), cpio[6:]...), "cpio"},
		{"old cpio", []byte("070707000000"), ""},
		{"bzip2", []byte("BZh91AY&SY"), ""},
		{"short", []byte("\x1f"), ""},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeImage(t, dir, arm, "1")
			os.Remove(filepath.Join(dir, InitrdName))
			if tt.name == "debian initrd.gz" {
				place(t, gz, filepath.Join(dir, InitrdName))
			} else {
				writeFile(t, filepath.Join(dir, InitrdName), tt.data)
			}
			sum, err := Inspect(dir, arm)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("Inspect with %s initrd = nil error, want refusal", tt.name)
				}
				wantErr(t, err, "/initrd is ")
				return
			}
			if err != nil || sum.Initrd != tt.want {
				t.Errorf("Inspect with %s initrd = %q, %v, want %q", tt.name, sum.Initrd, err, tt.want)
			}
		})
	}
}

func TestVerifyLayout(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string // "" for accepted
	}{
		{"valid", func(t *testing.T, dir string) {}, ""},
		{"extra file", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "README"), nil) }, ""},
		{"no directory", func(t *testing.T, dir string) { os.RemoveAll(dir) }, "does not exist"},
		{"symlink", func(t *testing.T, dir string) { os.Symlink("/etc/passwd", filepath.Join(dir, "x")) }, "/x is a symlink"},
		{"subdirectory", func(t *testing.T, dir string) { os.Mkdir(filepath.Join(dir, "nix-support"), 0o755) }, "/nix-support is a directory"},
		{"no kernel", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "Image")) }, "/Image is missing; slot c2.large.arm needs an aarch64 Image"},
		{"no initrd", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "initrd")) }, "/initrd is missing"},
		{"no script", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, ScriptName)) }, "/netboot.ipxe is missing"},
		{"not ipxe", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("kernel Image\n"))
		}, `netboot.ipxe line 1: script does not start with "#!ipxe"`},
		{"no kernel line", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\ninitrd initrd\nboot\n"))
		}, "netboot.ipxe has no kernel line"},
		{"no initrd line", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel Image\nboot\n"))
		}, "netboot.ipxe loads no initrd"},
		{"http kernel", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel http://evil.example/Image\ninitrd initrd\nboot\n"))
		}, "line 2: kernel http://evil.example/Image points outside the generation"},
		{"https initrd", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel Image\ninitrd https://x/initrd\nboot\n"))
		}, "points outside the generation"},
		{"dotdot", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel ../hydra-m2.xlarge.x86/Image\ninitrd initrd\nboot\n"))
		}, "points outside the generation"},
		{"initrd missing file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel Image\ninitrd initrd\ninitrd extra.cpio\nboot\n"))
		}, "line 4: initrd extra.cpio is not in the generation"},
		{"script boots another file", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "vmlinuz"), fakeKernel(Aarch64, "1"))
			writeFile(t, filepath.Join(dir, ScriptName), script("vmlinuz", "1"))
		}, "netboot.ipxe line 3: boots vmlinuz, but slot c2.large.arm needs an aarch64 Image (Image)"},
		{"extra initrd bad", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "extra"), []byte("junk"))
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel Image\ninitrd initrd\ninitrd extra\nboot\n"))
		}, "/extra is not an initrd"},
		{"options and dot slash", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ScriptName), []byte("#!ipxe\nkernel --name k ./Image console=ttyAMA0\ninitrd -n i --timeout=5000 initrd\nboot\n"))
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "img")
			os.Mkdir(dir, 0o755)
			writeImage(t, dir, arm, "1")
			tt.setup(t, dir)
			err := Verify(dir, arm)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Verify = %v, want nil", err)
				}
				return
			}
			wantErr(t, err, tt.want)
			if !strings.HasPrefix(err.Error(), "image: ") {
				t.Errorf("Verify = %q, want prefix image:", err)
			}
		})
	}
}

func TestVerifyUnknownSystem(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, dir, arm, "1")
	err := Verify(dir, Profile{Name: "riscv", System: "riscv64-linux", Kernel: "Image"})
	wantErr(t, err, "profile riscv has system")
}
