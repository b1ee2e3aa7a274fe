package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/testbin"
)

// imageRun runs `nbship image ARGS` in-process and returns its stdout,
// stderr and exit code.
func imageRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	err := run(context.Background(), e, append([]string{"image"}, args...))
	code = report(&errb, err)
	return out.String(), errb.String(), code
}

func imageWant(t *testing.T, args []string, got string, code, wantCode int, want ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("nbship image %s: exit %d, want %d; output:\n%s", strings.Join(args, " "), code, wantCode, got)
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("nbship image %s: output %q, want it to contain %q", strings.Join(args, " "), got, w)
		}
	}
}

var (
	imageArm, _ = image.Lookup("c2.large.arm", nil)
	imageX86, _ = image.Lookup("m2.xlarge.x86", nil)
)

// imageWriteImage writes a small image for p into dir: a kernel header
// with p's magic (the architecture checks themselves run on Debian's real
// kernels in package image), a gzip-headed initrd and NixOS's script.
func imageWriteImage(t *testing.T, dir string, p image.Profile, tag string) {
	t.Helper()
	k := make([]byte, 0x240)
	if p.System == image.Aarch64 {
		copy(k[0x38:], "ARMd")
	} else {
		copy(k[0x202:], "HdrS")
	}
	files := map[string][]byte{
		p.Kernel:       append(k, tag...),
		"initrd":       append([]byte{0x1f, 0x8b, 8, 0}, tag...),
		"netboot.ipxe": []byte(fmt.Sprintf("#!ipxe\n# %s\nkernel %s init=/nix/store/x/init initrd=initrd ${cmdline}\ninitrd initrd\nboot\n", tag, p.Kernel)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func imageAddGen(t *testing.T, pxe string, p image.Profile, tag string) image.Generation {
	t.Helper()
	s, err := image.OpenSlot(pxe, p)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	imageWriteImage(t, dir, p, tag)
	g, err := s.Publish(context.Background(), dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestImageUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no subcommand given"},
		{[]string{"frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"help"}, 0, "rollback"},
		{[]string{"list", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"list"}, 2, "no PXE directory given"},
		{[]string{"rollback", "--pxe-dir", "/"}, 2, "--instance NAME is required"},
		{[]string{"gc", "--pxe-dir", "/", "--instance", "c2.large.arm", "--keep", "0"}, 2, "keep at least 1"},
		{[]string{"list", "--bogus"}, 2, "unknown flag: --bogus"},
		{[]string{"list", "--pxe-dir", "/nonexistent/pxe"}, 1, "pxeDir /nonexistent/pxe does not exist"},
		{[]string{"url", "--instance", "c2.large.arm"}, 2, "no base URL given"},
		{[]string{"url", "--instance", "z9.huge.arm", "--base-url", "http://h/"}, 1, `unknown instance type "z9.huge.arm"; known: c2.large.arm`},
	}
	for _, tt := range tests {
		out, errs, code := imageRun(t, tt.args...)
		imageWant(t, tt.args, out+errs, code, tt.code, tt.want)
	}
}

func TestImageList(t *testing.T) {
	pxe := t.TempDir()
	args := []string{"list", "--pxe-dir", pxe}
	out, errs, code := imageRun(t, args...)
	imageWant(t, args, errs, code, 0, "no generations in "+pxe)
	if out != "" {
		t.Errorf("list of an empty pxeDir printed %q on stdout", out)
	}
	out, _, code = imageRun(t, "list", "--pxe-dir", pxe, "--json")
	imageWant(t, args, out, code, 0, "[]")

	a1 := imageAddGen(t, pxe, imageArm, "a1")
	a2 := imageAddGen(t, pxe, imageArm, "a2")
	x1 := imageAddGen(t, pxe, imageX86, "x1")
	// The old scripts' layout for another instance.
	os.MkdirAll(filepath.Join(pxe, "hydra-c1.large.arm"), 0o755)

	out, errs, code = imageRun(t, args...)
	imageWant(t, args, out, code, 0, "INSTANCE", "c2.large.arm", a1.Name, a2.Name, "m2.xlarge.x86", x1.Name)
	imageWant(t, args, errs, code, 0, "hydra-c1.large.arm is a plain directory")
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, a2.Name) != strings.Contains(line, "*") && line != "" && !strings.HasPrefix(line, "INSTANCE") && !strings.Contains(line, x1.Name) {
			t.Errorf("list line %q: only the current generations are starred", line)
		}
	}

	out, _, code = imageRun(t, "list", "--pxe-dir", pxe, "--instance", "c2.large.arm", "--json")
	var rows []struct {
		Instance string `json:"instance"`
		Name     string `json:"name"`
		Current  bool   `json:"current"`
		Files    int    `json:"files"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 0 {
		t.Fatalf("list --json = %q, exit %d: %v", out, code, err)
	}
	if len(rows) != 2 || rows[0].Name != a2.Name || !rows[0].Current || rows[1].Current || rows[0].Instance != "c2.large.arm" || rows[0].Files != 3 {
		t.Errorf("list --instance c2.large.arm --json = %+v, want %s (current) then %s", rows, a2.Name, a1.Name)
	}
}

func TestImageVerify(t *testing.T) {
	pxe := t.TempDir()
	g1 := imageAddGen(t, pxe, imageArm, "1")
	imageAddGen(t, pxe, imageArm, "2")
	dir := t.TempDir()
	imageWriteImage(t, dir, imageArm, "d")
	tests := []struct {
		args []string
		code int
		want string // in stdout (exit 0) or stderr
	}{
		{[]string{"verify", dir, "--instance", "c2.large.arm"}, 0, "ok " + dir + ": aarch64-linux Image, gzip initrd, 3 files"},
		{[]string{"verify", "--pxe-dir", pxe, "--instance", "c2.large.arm"}, 0, "ok " + filepath.Join(pxe, "hydra-c2.large.arm") + ":"},
		{[]string{"verify", g1.Name, "--pxe-dir", pxe, "--instance", "c2.large.arm"}, 0, "ok " + g1.Dir},
		{[]string{"verify", "1", "--pxe-dir", pxe, "--instance", "c2.large.arm"}, 0, "ok " + g1.Dir},
		{[]string{"verify", "9", "--pxe-dir", pxe, "--instance", "c2.large.arm"}, 1, `slot c2.large.arm has no generation "9"`},
		{[]string{"verify", dir, "--instance", "m2.xlarge.x86"}, 1, "nbship: image: " + dir + "/Image is an aarch64 Image, but slot m2.xlarge.x86 needs an x86_64 bzImage\n"},
		{[]string{"verify", "/nonexistent", "--instance", "c2.large.arm"}, 1, "image: /nonexistent does not exist"},
		{[]string{"verify", dir}, 2, "--instance NAME is required"},
	}
	for _, tt := range tests {
		out, errs, code := imageRun(t, tt.args...)
		got := errs
		if tt.code == 0 {
			got = out
		}
		imageWant(t, tt.args, got, code, tt.code, tt.want)
	}
	out, _, code := imageRun(t, "verify", dir, "--instance", "c2.large.arm", "--json")
	var sum struct {
		Instance, System, Kernel, Initrd string
		Files                            int
	}
	if err := json.Unmarshal([]byte(out), &sum); err != nil || code != 0 || sum.Instance != "c2.large.arm" || sum.System != "aarch64-linux" || sum.Kernel != "Image" || sum.Initrd != "gzip" || sum.Files != 3 {
		t.Errorf("verify --json = %q (%+v), exit %d, %v", out, sum, code, err)
	}
}

// Debian's real x86 kernel sent to the arm slot is refused naming both.
func TestImageVerifyDebianKernel(t *testing.T) {
	kernel := "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux"
	if _, err := os.Stat(kernel); err != nil {
		testbin.Missing(t, "%v (install debian-installer-12-netboot-amd64)", err)
	}
	dir := t.TempDir()
	imageWriteImage(t, dir, imageArm, "d")
	data, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "Image"), data, 0o644)
	args := []string{"verify", dir, "--instance", "c2.large.arm"}
	_, errs, code := imageRun(t, args...)
	imageWant(t, args, errs, code, 1, dir+"/Image is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image")
}

func TestImageRollbackAndGC(t *testing.T) {
	pxe := t.TempDir()
	var g []image.Generation
	for i := 1; i <= 4; i++ {
		g = append(g, imageAddGen(t, pxe, imageX86, fmt.Sprint(i)))
	}
	slot := filepath.Join(pxe, "hydra-m2.xlarge.x86")

	args := []string{"rollback", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86"}
	out, _, code := imageRun(t, args...)
	imageWant(t, args, out, code, 0, fmt.Sprintf("%s: serving %s (was %s)\n", slot, g[2].Name, g[3].Name))

	args = []string{"rollback", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--to", "1", "--json"}
	out, _, code = imageRun(t, args...)
	var rb struct {
		Instance, Previous, Name string
		Current                  bool
	}
	if err := json.Unmarshal([]byte(out), &rb); err != nil || code != 0 || rb.Name != g[0].Name || rb.Previous != g[2].Name || !rb.Current {
		t.Fatalf("rollback --to 1 --json = %q, exit %d, %v; want %s from %s", out, code, err, g[0].Name, g[2].Name)
	}
	if link, _ := os.Readlink(slot); link != ".nbship/generations/m2.xlarge.x86/"+g[0].Name {
		t.Errorf("slot link = %q after rollback, want %s", link, g[0].Name)
	}

	args = []string{"rollback", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--to", "000099-20200101T000000Z"}
	_, errs, code := imageRun(t, args...)
	imageWant(t, args, errs, code, 1, `has no generation "000099-20200101T000000Z"; it has: `+g[3].Name)

	args = []string{"rollback", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86"}
	_, errs, code = imageRun(t, args...)
	imageWant(t, args, errs, code, 1, "no generation older than the current "+g[0].Name)

	// gc keeps the newest 2 and the current (g[0]).
	args = []string{"gc", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--keep", "2"}
	out, _, code = imageRun(t, args...)
	imageWant(t, args, out, code, 0, g[1].Name+"\n")
	if strings.Count(out, "\n") != 1 {
		t.Errorf("gc --keep 2 printed %q, want only %s", out, g[1].Name)
	}
	args = []string{"gc", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--keep", "1", "--json"}
	out, _, code = imageRun(t, args...)
	imageWant(t, args, out, code, 0, `"removed":[`, g[2].Name)
	args = []string{"gc", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--keep", "1"}
	out, errs, code = imageRun(t, args...)
	imageWant(t, args, errs, code, 0, "nothing to remove")
	if out != "" {
		t.Errorf("gc with nothing to remove printed %q on stdout", out)
	}
	out, _, _ = imageRun(t, "list", "--pxe-dir", pxe, "--json")
	if !strings.Contains(out, g[3].Name) || !strings.Contains(out, g[0].Name) || strings.Count(out, `"name"`) != 2 {
		t.Errorf("after gc, list = %s, want %s and the current %s", out, g[3].Name, g[0].Name)
	}
}

func TestImageConfig(t *testing.T) {
	pxe := t.TempDir()
	conf := filepath.Join(t.TempDir(), "builders.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`buildHost       root@my.aarch64.builder
pxeHost         netboot@my.netboot.server
pxeDir          %s
opensslServer   my.netboot.server
opensslPort     61616
instance        c3.large.arm
keepGenerations 1
baseURL         http://my.netboot.server/netboot/
profile         c3.large.arm aarch64-linux
`, pxe)), 0o644)
	c3, err := image.Lookup("c3.large.arm", []image.Profile{{Name: "c3.large.arm", System: image.Aarch64}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		imageAddGen(t, pxe, c3, fmt.Sprint(i))
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"url", "--config", conf}, "http://my.netboot.server/netboot/hydra-c3.large.arm/netboot.ipxe\n"},
		{[]string{"url", "--config", conf, "--base-url", "https://other/", "--instance", "c2.large.arm"}, "https://other/hydra-c2.large.arm/netboot.ipxe\n"},
		{[]string{"verify", "--config", conf, "--local"}, "ok " + filepath.Join(pxe, "hydra-c3.large.arm")},
		{[]string{"list", "--config", conf, "--local"}, "c3.large.arm"},
		{[]string{"gc", "--config", conf, "--local"}, "000002-"}, // keepGenerations 1
	}
	for _, tt := range tests {
		out, errs, code := imageRun(t, tt.args...)
		imageWant(t, tt.args, out+errs, code, 0, tt.want)
	}

	bare := filepath.Join(t.TempDir(), "bare.conf")
	os.WriteFile(bare, []byte("pxeHost netboot@pxe\n"), 0o644)
	args := []string{"list", "--config", bare, "--local"}
	_, errs, code := imageRun(t, args...)
	imageWant(t, args, errs, code, 1, `missing key "pxeDir"; add a line like: pxeDir`)
}

// imageStoreOutput writes an image for p laid out as a Nix build output
// often is: kernel and initrd are symlinks into another directory.
func imageStoreOutput(t *testing.T, p image.Profile, tag, kernelTag string) string {
	t.Helper()
	files, out := t.TempDir(), t.TempDir()
	imageWriteImage(t, files, p, kernelTag)
	for _, name := range []string{p.Kernel, "initrd"} {
		if err := os.Symlink(filepath.Join(files, name), filepath.Join(out, name)); err != nil {
			t.Fatal(err)
		}
	}
	other := t.TempDir()
	imageWriteImage(t, other, p, tag)
	if err := os.Rename(filepath.Join(other, "netboot.ipxe"), filepath.Join(out, "netboot.ipxe")); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestImagePublish(t *testing.T) {
	pxe := t.TempDir()
	slot := filepath.Join(pxe, "hydra-m2.xlarge.x86")
	src1 := imageStoreOutput(t, imageX86, "one", "k")
	args := []string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", src1}
	out, errs, code := imageRun(t, args...)
	imageWant(t, args, out, code, 0, slot+": serving 000001-")
	imageWant(t, args, errs, code, 0, "published 3 files (3 copied, 0 already there)")
	// The symlinks were followed: the slot serves files, not links.
	for _, name := range []string{"bzImage", "initrd"} {
		fi, err := os.Lstat(filepath.Join(slot, name))
		if err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s in the slot: %v, %v; want a regular file", name, fi, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(slot, "netboot.ipxe")); !bytes.Contains(b, []byte("# one\n")) {
		t.Errorf("slot serves netboot.ipxe %q, want generation one's", b)
	}

	// Same kernel and initrd, new script: only the script is copied.
	src2 := imageStoreOutput(t, imageX86, "two", "k")
	args = []string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--json", src2}
	out, _, code = imageRun(t, args...)
	var res imagePublished
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 {
		t.Fatalf("publish --json = %q, exit %d: %v", out, code, err)
	}
	if res.Instance != "m2.xlarge.x86" || res.Published != slot || !strings.HasPrefix(res.Generation, "000002-") ||
		!strings.HasPrefix(res.Previous, "000001-") || res.Files != 3 || res.FilesSent != 1 || res.Reused != 2 ||
		res.Bytes == 0 || res.Bytes >= res.TotalBytes {
		t.Errorf("publish --json = %+v, want generation 2 after 1, the script copied and 2 files reused", res)
	}

	// An x86 kernel for the arm slot is refused; the arm slot keeps serving
	// what it served.
	armSlot := filepath.Join(pxe, "hydra-c2.large.arm")
	g := imageAddGen(t, pxe, imageArm, "arm1")
	wrong := imageStoreOutput(t, imageX86, "wrong", "w")
	os.Rename(filepath.Join(wrong, "bzImage"), filepath.Join(wrong, "Image"))
	args = []string{"publish", "--pxe-dir", pxe, "--instance", "c2.large.arm", wrong}
	out, errs, code = imageRun(t, args...)
	imageWant(t, args, errs, code, protocol.ExitRefused, "nbship: image: "+wrong+"/Image is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image\n",
		"nbship: hint: nothing was published: "+armSlot+" still serves "+g.Name+"\n")
	if out != "" {
		t.Errorf("refused publish printed %q on stdout", out)
	}
	if link, _ := os.Readlink(armSlot); link != ".nbship/generations/c2.large.arm/"+g.Name {
		t.Errorf("arm slot = %q after a refused publish, want %s", link, g.Name)
	}
	if ents, _ := os.ReadDir(filepath.Join(pxe, ".nbship", "generations", "c2.large.arm")); len(ents) != 2 { // GEN and GEN.sums
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("arm generations dir holds %v after a refused publish, want only %s and its sums", names, g.Name)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86"}, 2, "no image directory given"},
		{[]string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", src1, src2}, 2, "unexpected argument"},
		{[]string{"publish", "--pxe-dir", pxe, src1}, 2, "--instance NAME is required"},
		{[]string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", "--keep", "0", src1}, 2, "keep at least 1"},
		{[]string{"publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", filepath.Join(pxe, "nope")}, 1, "nope does not exist"},
		{[]string{"publish", "--pxe-dir", pxe, "--instance", "c9.odd", "--system", "sparc64-linux", src1}, 2, `system "sparc64-linux" is not`},
	} {
		out, errs, code := imageRun(t, tt.args...)
		imageWant(t, tt.args, out+errs, code, tt.code, tt.want)
	}

	// --system makes an instance nbship does not know publishable.
	args = []string{"publish", "--pxe-dir", pxe, "--instance", "n3.xlarge.x86", "--system", "x86_64-linux", src1}
	out, _, code = imageRun(t, args...)
	imageWant(t, args, out, code, 0, filepath.Join(pxe, "hydra-n3.xlarge.x86")+": serving 000001-")
}

func TestImageRemoteArgs(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "builders.conf")
	os.WriteFile(conf, []byte(`pxeHost         netboot@pxe
pxeDir          /srv/netboot/
instance        c3.large.arm
keepGenerations 5
profile         c3.large.arm aarch64-linux
`), 0o644)
	tests := []struct {
		sub      string
		args     []string
		resolved []string
		want     string
	}{
		{"list", []string{"--host", "pxe", "--pxe-dir", "/p"}, nil,
			"image list --pxe-dir=/p --"},
		{"list", []string{"--config", conf, "--json", "-i", "/id", "--known-hosts", "/kh", "--accept-new"}, nil,
			"image list --json=true --pxe-dir=/srv/netboot/ --instance=c3.large.arm --system=aarch64-linux --"},
		{"rollback", []string{"--config", conf, "--instance", "m2.xlarge.x86", "--to", "3"}, nil,
			"image rollback --instance=m2.xlarge.x86 --to=3 --pxe-dir=/srv/netboot/ --"},
		{"gc", []string{"--config", conf}, []string{"keep", "5"},
			"image gc --pxe-dir=/srv/netboot/ --instance=c3.large.arm --system=aarch64-linux --keep=5 --"},
		{"gc", []string{"--config", conf, "--keep", "2"}, []string{"keep", "2"},
			"image gc --keep=2 --pxe-dir=/srv/netboot/ --instance=c3.large.arm --system=aarch64-linux --"},
		{"verify", []string{"--host", "h", "--pxe-dir", "/p", "--instance", "x", "--system", "x86_64-linux", "--", "-odd dir"}, nil,
			"image verify --instance=x --pxe-dir=/p --system=x86_64-linux -- -odd dir"},
	}
	for _, tt := range tests {
		var errb bytes.Buffer
		e := &env{stdout: &errb, stderr: &errb, getenv: func(string) string { return "" }}
		fs := newFlagSet(e, "image "+tt.sub, "")
		f := addImageFlags(fs, "image "+tt.sub, true, true)
		fs.String("to", "", "")
		fs.Int("keep", 0, "")
		if err := parseFlags(fs, tt.args); err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		got, err := f.remoteArgs(fs, tt.resolved...)
		if err != nil {
			t.Fatalf("remoteArgs(%q) = %v", tt.args, err)
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("remoteArgs(%q) =\n  %q\nwant\n  %q", tt.args, strings.Join(got, " "), tt.want)
		}
	}
}

func TestImageWhere(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "builders.conf")
	os.WriteFile(conf, []byte("pxeHost netboot@pxe\npxeDir /p\n"), 0o644)
	tests := []struct {
		args []string
		host string
		err  string
	}{
		{[]string{"--pxe-dir", "/p"}, "", ""},
		{[]string{"--host", "root@other"}, "root@other", ""},
		{[]string{"--config", conf}, "netboot@pxe", ""},
		{[]string{"--config", conf, "--host", "root@other"}, "root@other", ""},
		{[]string{"--config", conf, "--local"}, "", ""},
		{[]string{"--local", "--host", "x"}, "", "--host and --local: give one"},
	}
	for _, tt := range tests {
		e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
		fs := newFlagSet(e, "image list", "")
		f := addImageFlags(fs, "image list", true, true)
		if err := parseFlags(fs, tt.args); err != nil {
			t.Fatal(err)
		}
		host, err := f.remoteHost()
		if host != tt.host || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("remoteHost(%q) = %q, %v; want %q, %q", tt.args, host, err, tt.host, tt.err)
		}
	}
	// url has no host: it only computes.
	e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	fs := newFlagSet(e, "image url", "")
	addImageFlags(fs, "image url", false, true)
	if fs.Lookup("host") != nil {
		t.Errorf("image url has a --host flag")
	}
}

// With --host the subcommand really goes to the host: one that does not
// answer is named in the error and nothing happens here.
func TestImageHostUnreachable(t *testing.T) {
	pxe := t.TempDir()
	for _, sub := range [][]string{
		{"list"},
		{"rollback", "--instance", "m2.xlarge.x86"},
		{"gc", "--instance", "m2.xlarge.x86"},
		{"verify", "--instance", "m2.xlarge.x86"},
		{"publish", "--instance", "m2.xlarge.x86", t.TempDir()},
	} {
		args := append(append([]string{"image"}, sub...), "--pxe-dir", pxe, "--host", "netboot@127.0.0.1:1")
		code, stdout, stderr := runNbship(t, args...)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "127.0.0.1:1") {
			t.Errorf("nbship %s: exit %d, stdout %q, stderr %q; want exit 1 naming the host", strings.Join(args, " "), code, stdout, stderr)
		}
	}
	if ents, _ := os.ReadDir(pxe); len(ents) != 0 {
		t.Errorf("the local pxeDir was touched: %v", ents)
	}
}

func TestHeldLines(t *testing.T) {
	tests := []struct {
		name, in          string
		passed, msg, hint string
	}{
		{"error only", "note 1\nnbship: image: bad\n", "note 1\n", "image: bad", ""},
		{"error and hint", "a\nb\nnbship: image: bad\nnbship: hint: do x\n", "a\nb\n", "image: bad", "do x"},
		{"unterminated", "a\nnbship: image: bad", "a\n", "image: bad", ""},
		{"no nbship line", "a\nb\nc\n", "a\nb\nc\n", "", ""},
		{"hint alone", "a\nnbship: hint: x\n", "a\nnbship: hint: x\n", "", ""},
		{"notes before", "nbship: waiting for slot\nnbship: image: bad\n", "nbship: waiting for slot\n", "image: bad", ""},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		h := &heldLines{w: &out}
		for _, c := range []byte(tt.in) { // byte by byte: lines arrive in pieces
			h.Write([]byte{c})
		}
		msg, hint := h.failure()
		if out.String() != tt.passed || msg != tt.msg || hint != tt.hint {
			t.Errorf("%s: passed %q, failure() = %q, %q; want %q, %q, %q", tt.name, out.String(), msg, hint, tt.passed, tt.msg, tt.hint)
		}
		out.Reset()
		h = &heldLines{w: &out}
		h.Write([]byte(tt.in))
		h.flush()
		want := tt.in
		if !strings.HasSuffix(want, "\n") {
			want += "\n"
		}
		if out.String() != want {
			t.Errorf("%s: flush passed %q, want all of %q", tt.name, out.String(), want)
		}
	}
}

// Two publishes that wait for the slot's lock at once each say what the
// slot served when it was theirs: one was the first generation, the other
// was the one the first of them published, never both the first.
func TestImagePublishSaysWhatItReplacedUnderTheLock(t *testing.T) {
	pxe := t.TempDir()
	g1 := imageAddGen(t, pxe, imageX86, "one")
	s, err := image.OpenSlot(pxe, imageX86)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		out  string
		code int
	}
	results := make(chan result, 2)
	var errs [2]*testbin.Buffer
	for i := range errs {
		errs[i] = &testbin.Buffer{}
		src := imageStoreOutput(t, imageX86, fmt.Sprint("new", i), "k")
		go func() {
			var out bytes.Buffer
			e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: errs[i], getenv: func(string) string { return "" }}
			err := run(context.Background(), e, []string{"image", "publish", "--pxe-dir", pxe, "--instance", "m2.xlarge.x86", src})
			results <- result{out.String(), report(errs[i], err)}
		}()
	}
	// Both wait for the lock the test holds, then go one after the other.
	for i := range errs {
		for !strings.Contains(errs[i].String(), "waiting for slot") {
			select {
			case r := <-results:
				t.Fatalf("a publish ended while the test held the slot's lock: exit %d, %q, %q", r.code, r.out, errs[i])
			default:
			}
			time.Sleep(time.Millisecond)
		}
	}
	unlock()
	var was []string
	for range errs {
		r := <-results
		if r.code != 0 {
			t.Fatalf("publish: exit %d, stdout %q, stderr %q %q", r.code, r.out, errs[0], errs[1])
		}
		_, w, ok := strings.Cut(strings.TrimSpace(r.out), "(was ")
		if !ok {
			t.Fatalf("publish said %q, want serving N (was M)", r.out)
		}
		was = append(was, strings.TrimSuffix(w, ")"))
	}
	gens, err := s.List()
	if err != nil || len(gens) != 3 {
		t.Fatalf("List() = %v, %v; want 3 generations", gens, err)
	}
	slices.Sort(was)
	if want := []string{g1.Name, gens[1].Name}; !slices.Equal(was, want) {
		t.Errorf("the two publishes said they replaced %q, want %q (each what the slot served when it got the lock)", was, want)
	}
}
