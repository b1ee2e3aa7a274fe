package remote

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nbship/nbship/internal/testsshd"
)

// fakeBinSSHD runs an sshd whose commands find dir first on their PATH.
func fakeBinSSHD(t *testing.T) (*sshd, *home, string) {
	t.Helper()
	bin := t.TempDir()
	s := testsshd.Start(t, testsshd.Options{Env: []string{"PATH=" + bin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}})
	h := newHome(t)
	s.Authorize(h.key.PublicKey())
	h.trust(s)
	return s, h, bin
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestArch(t *testing.T) {
	t.Parallel()
	s, h, bin := fakeBinSSHD(t)
	c := h.dial(s.Addr)
	ctx := context.Background()

	// This machine, with the real uname.
	m, err := exec.Command("uname", "-m").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"x86_64": "amd64", "aarch64": "arm64"}[strings.TrimSpace(string(m))]
	if got, err := c.Arch(ctx); got != want || err != nil {
		t.Errorf("Arch() = %q, %v, want %q", got, err, want)
	}

	for _, tt := range []struct{ machine, want, wantErr string }{
		{"x86_64", "amd64", ""},
		{"amd64", "amd64", ""},
		{"aarch64", "arm64", ""},
		{"arm64", "arm64", ""},
		{"armv7l", "", `unsupported machine "armv7l"`},
		{"riscv64", "", `unsupported machine "riscv64"`},
	} {
		writeScript(t, filepath.Join(bin, "uname"), "echo "+tt.machine)
		got, err := c.Arch(ctx)
		if got != tt.want || (tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) || err != nil && !strings.Contains(err.Error(), s.Addr) {
			t.Errorf("Arch() with uname -m %s = %q, %v, want %q, %q", tt.machine, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestInstallNbship(t *testing.T) {
	t.Parallel()
	s, h, bin := fakeBinSSHD(t)
	c := h.dial(s.Addr)
	ctx := context.Background()

	// The "binary" is a script, so the host can run it; 100 KiB of
	// comment make the upload take more than one write.
	local := filepath.Join(t.TempDir(), "nbship-amd64")
	writeScript(t, local, "echo uploaded-nbship \"$@\"\n#"+strings.Repeat("x", 100<<10))
	content, _ := os.ReadFile(local)
	var asked []string
	binary := func(goarch string) (string, error) {
		asked = append(asked, goarch)
		return local, nil
	}
	wantPath := filepath.Join(s.Home, ".cache", "nbship", "dev-"+sha256hex(content)[:16], "nbship")
	logLines := func() int { return strings.Count(h.log.String(), "uploaded nbship") }

	check := func(what string, wantUploads int) {
		t.Helper()
		got, err := c.InstallNbship(ctx, InstallOptions{Version: "dev", Binary: binary})
		if err != nil || got != wantPath {
			t.Fatalf("%s: InstallNbship() = %q, %v, want %q", what, got, err, wantPath)
		}
		if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, content) {
			t.Errorf("%s: the file on the host differs from the local binary (%v)", what, err)
		}
		if out, err := c.Output(ctx, got, "works"); err != nil || string(out) != "uploaded-nbship works\n" {
			t.Errorf("%s: running %s = %q, %v", what, got, out, err)
		}
		if n := logLines(); n != wantUploads {
			t.Errorf("%s: %d uploads logged, want %d", what, n, wantUploads)
		}
		if tmp, _ := filepath.Glob(filepath.Join(filepath.Dir(got), ".nbship.tmp.*")); len(tmp) > 0 {
			t.Errorf("%s: temp files left: %v", what, tmp)
		}
	}
	inode := func() uint64 {
		st, err := os.Stat(wantPath)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}

	check("first", 1)
	st, _ := os.Stat(wantPath)
	if st.Mode().Perm() != 0o755 {
		t.Errorf("mode of %s = %v, want 0755", wantPath, st.Mode())
	}
	if dst, _ := os.Stat(filepath.Dir(wantPath)); dst.Mode().Perm() != 0o700 {
		t.Errorf("mode of %s = %v, want 0700", filepath.Dir(wantPath), dst.Mode())
	}
	// Both architectures are asked for up front, so that finding the
	// cached copy takes one command on the host.
	if strings.Join(asked, " ") != "amd64 arm64" {
		t.Errorf("Binary called with %q, want [amd64 arm64]", asked)
	}
	first := inode()
	sessions := s.LogCount("Starting session")
	if _, err := c.InstallNbship(ctx, InstallOptions{Version: "dev", Binary: binary}); err != nil {
		t.Fatal(err)
	}
	if n := s.LogCount("Starting session") - sessions; n != 1 {
		t.Errorf("InstallNbship with a cached copy opened %d sessions, want 1 (one login shell)", n)
	}
	check("reuse", 1)
	if inode() != first {
		t.Error("reuse: the cached file was replaced")
	}

	// A damaged cache file is replaced.
	if err := os.WriteFile(wantPath, []byte("#!/bin/sh\necho damaged\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	check("damaged", 2)

	// Override: used as is, nothing asked of the host.
	if got, err := c.InstallNbship(ctx, InstallOptions{Override: "/opt/nbship", Binary: binary}); got != "/opt/nbship" || err != nil {
		t.Errorf("InstallNbship(Override) = %q, %v, want /opt/nbship", got, err)
	}

	// An nbship on the PATH with the same version is used, never for dev.
	onPath := filepath.Join(bin, "nbship")
	writeScript(t, onPath, `[ "$1" = --version ] && echo "nbship 1.2.3"`)
	if got, err := c.InstallNbship(ctx, InstallOptions{Version: "1.2.3", Binary: binary}); got != onPath || err != nil {
		t.Errorf("InstallNbship(1.2.3 on PATH) = %q, %v, want %q", got, err, onPath)
	}
	writeScript(t, onPath, `[ "$1" = --version ] && echo "nbship dev"`)
	check("dev on PATH", 2)
	got, err := c.InstallNbship(ctx, InstallOptions{Version: "1.2.4", Binary: binary})
	if want := filepath.Join(s.Home, ".cache", "nbship", "1.2.4-"+sha256hex(content)[:16], "nbship"); got != want || err != nil {
		t.Errorf("InstallNbship(1.2.4, 1.2.3 on PATH) = %q, %v, want %q", got, err, want)
	}

	// No binary for the host.
	_, err = c.InstallNbship(ctx, InstallOptions{Version: "dev", Binary: func(string) (string, error) {
		return "", errors.New("no build for this arch")
	}})
	if err == nil || !strings.Contains(err.Error(), "no build for this arch") {
		t.Errorf("InstallNbship(Binary fails) = %v, want its error", err)
	}

	// An upload that arrives damaged (a lying sha256sum stands in for a
	// damaged transfer) is refused, and its temp file removed.
	writeScript(t, filepath.Join(bin, "sha256sum"), `echo 0000000000000000000000000000000000000000000000000000000000000000 -`)
	_, err = c.InstallNbship(ctx, InstallOptions{Version: "2.0", Binary: binary})
	if err == nil || !strings.Contains(err.Error(), "upload corrupted") {
		t.Errorf("InstallNbship(damaged upload) = %v, want a corrupted-upload error", err)
	}
	dir := filepath.Join(s.Home, ".cache", "nbship", "2.0-"+sha256hex(content)[:16])
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files left in %s after a failed upload: %v", dir, left)
	}
}

func TestCacheDirName(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	for _, tt := range []struct{ version, want string }{
		{"1.2.3", "1.2.3-abababababababab"},
		{"dev", "dev-abababababababab"},
		{"v1.0+git/../x", "v1.0+git_.._x-abababababababab"},
		{"", "v-abababababababab"},
		{"..", "v..-abababababababab"},
	} {
		if got := cacheDirName(tt.version, sum); got != tt.want {
			t.Errorf("cacheDirName(%q) = %q, want %q", tt.version, got, tt.want)
		}
	}
}
