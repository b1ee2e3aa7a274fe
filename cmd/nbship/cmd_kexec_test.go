package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nbship/nbship/kexec"
)

// kexec-end is an end the controller starts: not in the usage, but there.
func TestKexecEndHidden(t *testing.T) {
	var out bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
	if err := run(context.Background(), e, []string{"help"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "\n  kexec ") || strings.Contains(out.String(), kexec.EndCommand) {
		t.Errorf("nbship help = %q, want kexec listed and %s not", out.String(), kexec.EndCommand)
	}
	if _, ok := commands[kexec.EndCommand]; !ok {
		t.Errorf("no command %s", kexec.EndCommand)
	}
}

func TestKexecUsage(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "builders.conf")
	writeFile(t, conf, []byte("pxeHost netboot@pxe\npxeDir /srv/netboot/\n"), 0o644)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"kexec", "--config", conf, "--instance", "m2.xlarge.x86"}, "give one HOST"},
		{[]string{"kexec", "h", "--config", conf, "--instance", "m2.xlarge.x86", "--fetch", "carrier-pigeon"}, "want auto, url or controller"},
		{[]string{"kexec", "h", "--config", conf, "--instance", "m2.xlarge.x86", "--timeout", "0s"}, "positive duration"},
		{[]string{"kexec", "h", "--config", conf}, "--instance NAME is required"},
		{[]string{"kexec", "h", "--instance", "m2.xlarge.x86"}, "--config FILE is required"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(string) string { return "" }}
		err := run(context.Background(), e, tt.args)
		if code := report(&out, err); code != 2 || !strings.Contains(out.String(), tt.want) {
			t.Errorf("nbship %v = exit %d, %q; want exit 2 and %q", tt.args, code, out.String(), tt.want)
		}
	}
}

// The end refuses what it cannot carry out before it touches anything:
// a plan that is not one, a kernel of another architecture.
func TestKexecEndRefusesBeforeLoading(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the refused kernel is the other architecture's; written for amd64 hosts")
	}
	bin := nbshipBinary(t, "amd64")
	sum := strings.Repeat("ab", 32)
	plan, _ := json.Marshal(kexec.Plan{
		Instance: "c2.large.arm", Generation: "000001-20261202T000000Z", System: "aarch64-linux",
		Kernel:  kexec.File{Name: "Image", URL: "http://127.0.0.1:9/Image", Size: 10, SHA256: sum},
		Initrd:  kexec.File{Name: "initrd", URL: "http://127.0.0.1:9/initrd", Size: 10, SHA256: sum},
		Cmdline: "init=/sbin/init",
	})
	tests := []struct {
		stdin string
		code  int
		want  string
	}{
		{"not json\n", 1, "kexec: the plan on standard input is not valid JSON"},
		{"", 1, "standard input ended before the plan"},
		{`{"system":"x86_64-linux","kernel":{"name":"../bzImage","size":1,"sha256":"` + sum + `"}}` + "\n", 1, "not a plain name"},
		{string(plan) + "\n", kexec.ExitRefused, "kexec: refused: the image's kernel is aarch64-linux, but this host is x86_64"},
	}
	for _, tt := range tests {
		tmp := t.TempDir()
		cmd := exec.Command(bin, kexec.EndCommand)
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		cmd.Stdin = strings.NewReader(tt.stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		ee, _ := err.(*exec.ExitError)
		if ee == nil || ee.ExitCode() != tt.code || !strings.Contains(stderr.String(), tt.want) || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("nbship %s <<< %.40q = %v, stderr %q; want exit %d and one line with %q", kexec.EndCommand, tt.stdin, err, stderr.String(), tt.code, tt.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("nbship %s <<< %.40q printed %q on stdout, want nothing", kexec.EndCommand, tt.stdin, stdout.String())
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("nbship %s <<< %.40q left %v in TMPDIR", kexec.EndCommand, tt.stdin, left)
		}
	}
}
