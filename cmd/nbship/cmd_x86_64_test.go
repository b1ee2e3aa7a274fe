package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestX86_64ConfigErrors(t *testing.T) {
	// The x86 flow needs only the PXE host: no build host, no channel.
	const seed = "pxeHost netboot@127.0.0.1:1\npxeDir /srv/netboot/\n"
	for _, tc := range []struct {
		name, conf string
		args       []string
		code       int
		want       string
	}{
		{"aarch64 instance in the config", seed + "instance c2.large.arm\n", nil, 2,
			"instance c2.large.arm is aarch64-linux, not x86_64-linux"},
		{"aarch64 instance on the command line", seed, []string{"--instance", "c1.large.arm"}, 2,
			"instance c1.large.arm is aarch64-linux, not x86_64-linux"},
		{"aarch64 profile line", seed + "profile c3.large.arm aarch64-linux\n", []string{"--instance", "c3.large.arm"}, 2,
			"instance c3.large.arm is aarch64-linux, not x86_64-linux"},
		{"unknown instance", seed, []string{"--instance", "z9.huge.sparc"}, 2, `unknown instance type "z9.huge.sparc"`},
		{"missing pxeHost", "pxeDir /srv/netboot/\n", nil, 1, `missing key "pxeHost"`},
		{"missing pxeDir", "pxeHost netboot@p\n", nil, 1, `missing key "pxeDir"; add a line like: pxeDir`},
		{"extra argument", seed, []string{"now"}, 2, `x86_64: unexpected argument "now"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "builders.conf")
			if err := os.WriteFile(p, []byte(tc.conf), 0o644); err != nil {
				t.Fatal(err)
			}
			code, stdout, stderr := runNbship(t, append([]string{"x86_64", "--config", p}, tc.args...)...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			first := strings.SplitN(stderr, "\n", 2)[0]
			if !strings.Contains(first, tc.want) {
				t.Errorf("first line = %q, want it to contain %q", first, tc.want)
			}
			// Refused before reaching any host or running Nix.
			if strings.Contains(stderr, "instantiating") || strings.Contains(stderr, "127.0.0.1") {
				t.Errorf("went on after the refusal:\n%s", stderr)
			}
		})
	}
	if code, _, stderr := runNbship(t, "x86_64"); code != 2 || !strings.Contains(stderr, "--config FILE is required") {
		t.Errorf("no --config: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runNbship(t, "x86_64", "--config", "/nonexistent/builders.conf"); code != 1 || !strings.Contains(stderr, "/nonexistent/builders.conf") {
		t.Errorf("missing file: exit %d, %q", code, stderr)
	}
}

// An x86 image names the aarch64 command in its hint, and the other way round.
func TestX86_64HintNamesTheOtherFlow(t *testing.T) {
	p := filepath.Join(t.TempDir(), "builders.conf")
	os.WriteFile(p, []byte("pxeHost netboot@p\npxeDir /srv/netboot/\n"), 0o644)
	_, _, stderr := runNbship(t, "x86_64", "--config", p, "--instance", "c2.large.arm")
	if !strings.Contains(stderr, "nbship: hint: use 'nbship aarch64' for it") {
		t.Errorf("stderr = %q, want a hint naming nbship aarch64", stderr)
	}
}
