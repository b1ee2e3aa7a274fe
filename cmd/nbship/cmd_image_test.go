package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbship/nbship/image"
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

func imagePublish(t *testing.T, pxe string, p image.Profile, tag string) image.Generation {
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

	a1 := imagePublish(t, pxe, imageArm, "a1")
	a2 := imagePublish(t, pxe, imageArm, "a2")
	x1 := imagePublish(t, pxe, imageX86, "x1")
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
	g1 := imagePublish(t, pxe, imageArm, "1")
	imagePublish(t, pxe, imageArm, "2")
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
		if os.Getenv("NBSHIP_REQUIRE_RIG") == "1" {
			t.Fatalf("%v (install debian-installer-12-netboot-amd64)", err)
		}
		t.Skipf("%v (install debian-installer-12-netboot-amd64)", err)
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
		g = append(g, imagePublish(t, pxe, imageX86, fmt.Sprint(i)))
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
	imageWant(t, args, out, code, 0, `"removed": [`, g[2].Name)
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
		imagePublish(t, pxe, c3, fmt.Sprint(i))
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"url", "--config", conf}, "http://my.netboot.server/netboot/hydra-c3.large.arm/netboot.ipxe\n"},
		{[]string{"url", "--config", conf, "--base-url", "https://other/", "--instance", "c2.large.arm"}, "https://other/hydra-c2.large.arm/netboot.ipxe\n"},
		{[]string{"verify", "--config", conf}, "ok " + filepath.Join(pxe, "hydra-c3.large.arm")},
		{[]string{"list", "--config", conf}, "c3.large.arm"},
		{[]string{"gc", "--config", conf}, "000002-"}, // keepGenerations 1
	}
	for _, tt := range tests {
		out, errs, code := imageRun(t, tt.args...)
		imageWant(t, tt.args, out+errs, code, 0, tt.want)
	}

	bare := filepath.Join(t.TempDir(), "bare.conf")
	os.WriteFile(bare, []byte("pxeHost netboot@pxe\n"), 0o644)
	args := []string{"list", "--config", bare}
	_, errs, code := imageRun(t, args...)
	imageWant(t, args, errs, code, 1, `missing key "pxeDir"; add a line like: pxeDir`)
}
