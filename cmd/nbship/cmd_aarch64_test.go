package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runNbship runs the command in-process and returns its exit code and
// streams, as main would.
func runNbship(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	ev := &env{stdin: strings.NewReader(""), stdout: &o, stderr: &e, getenv: func(k string) string {
		if k == "HOME" {
			return t.TempDir()
		}
		return ""
	}}
	code = report(&e, run(context.Background(), ev, args))
	return code, o.String(), e.String()
}

func TestAarch64ConfigErrors(t *testing.T) {
	const seed = "buildHost root@b\npxeHost netboot@p\npxeDir /srv/netboot/\nopensslServer p\nopensslPort 61616\n"
	for _, tc := range []struct {
		name, conf, want string
	}{
		{"missing key", strings.Replace(seed, "opensslServer p\n", "", 1),
			`missing key "opensslServer"; add a line like: opensslServer   my.netboot.server`},
		{"missing pxeDir", strings.Replace(seed, "pxeDir /srv/netboot/\n", "", 1),
			`missing key "pxeDir"; add a line like: pxeDir          /var/lib/nginx/netboot/`},
		{"unknown key", seed + "opensslPsk abc\n", `builders.conf:6: unknown key "opensslPsk"`},
		{"bad line", seed + "buildJobs many\n", `builders.conf:6: buildJobs: value "many" must be a positive whole number`},
		{"bad port", strings.Replace(seed, "61616", "616160", 1), `builders.conf:5: opensslPort: value "616160" must be a TCP port`},
		{"x86 instance", seed + "instance m2.xlarge.x86\n", "instance m2.xlarge.x86 is x86_64-linux, not aarch64-linux"},
		{"unknown instance", seed + "instance z9.huge.sparc\n", "z9.huge.sparc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "builders.conf")
			if err := os.WriteFile(p, []byte(tc.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runNbship(t, "aarch64", "--config", p)
			if code == 0 {
				t.Fatalf("exit 0 for a bad config")
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			first := strings.SplitN(stderr, "\n", 2)[0]
			if !strings.Contains(first, tc.want) {
				t.Errorf("first line = %q, want it to contain %q", first, tc.want)
			}
		})
	}
	if code, _, stderr := runNbship(t, "aarch64"); code != 2 || !strings.Contains(stderr, "--config FILE is required") {
		t.Errorf("no --config: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runNbship(t, "aarch64", "--config", "/nonexistent/builders.conf"); code != 1 || !strings.Contains(stderr, "/nonexistent/builders.conf") {
		t.Errorf("missing file: exit %d, %q", code, stderr)
	}
}

func TestSendExitsDialFailedWhenNobodyListens(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "f", []byte("x"))
	// Port 1 on loopback: connection refused at once, every time.
	p := start(t, bin, "send", "--connect", "127.0.0.1:1", "--dial-timeout", "500ms", "--peer-pin", "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", src)
	p.line(t) // fingerprint
	_, err := p.wait(t)
	if code := p.cmd.ProcessState.ExitCode(); code != 75 {
		t.Fatalf("sender exit = %d (%v), want 75 (could not reach the receiver); stderr %s", code, err, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), "cannot reach 127.0.0.1:1") {
		t.Errorf("stderr = %q", p.stderr)
	}
}
