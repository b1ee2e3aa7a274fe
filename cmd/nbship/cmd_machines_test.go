package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nbship/nbship/metal"
	"github.com/nbship/nbship/metal/metaltest"
)

// machinesServer is a fake API whose devices all answer SSH on 127.0.0.1
// at one port, with a host key made from a fixed seed so the golden file
// stays put; one builder's address has nothing listening.
func machinesServer(t *testing.T) (*metaltest.Server, *metaltest.SSHServer) {
	t.Helper()
	srv := metaltest.NewServer(t, pkToken, pkProject)
	sshd := metaltest.NewSSHServer(t, metaltest.Ed25519Signer(t, "nbship machines golden"))
	for _, d := range []metaltest.Device{
		{ID: "a0000000-0000-4000-8000-000000000001", Hostname: "arm1", State: "active", Plan: "c2.large.arm", PublicIP: "127.0.0.1", PrivateIP: "10.0.0.1", Tags: []string{"hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000002", Hostname: "arm64", State: "active", Plan: "c3.large.arm64", PublicIP: "127.0.0.1", Tags: []string{"arm", "hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000003", Hostname: "x86a", State: "active", Plan: "m2.xlarge.x86", PublicIP: "127.0.0.1", Tags: []string{"hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000004", Hostname: "custom", State: "active", Plan: "n9.huge.custom", PublicIP: "127.0.0.1", Tags: []string{"hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000005", Hostname: "drained", State: "active", Plan: "c2.large.arm", PublicIP: "127.0.0.1", Tags: []string{"hydra", "skip-hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000006", Hostname: "booting", State: "provisioning", Plan: "c2.large.arm", PublicIP: "127.0.0.1", Tags: []string{"hydra"}},
		{ID: "a0000000-0000-4000-8000-000000000007", Hostname: "untagged", State: "active", Plan: "c2.large.arm", PublicIP: "127.0.0.1", Tags: []string{"ci"}},
		{ID: "a0000000-0000-4000-8000-000000000008", Hostname: "unreachable", State: "active", Plan: "c2.large.arm", PublicIP: "127.0.0.2", Tags: []string{"hydra"}},
	} {
		srv.AddDevice(d)
	}
	return srv, sshd
}

func TestMachinesGolden(t *testing.T) {
	srv, sshd := machinesServer(t)
	cfg := filepath.Join(t.TempDir(), "builders.conf")
	if err := os.WriteFile(cfg, []byte("profile n9.huge.custom x86_64-linux\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"machines", "--config", cfg, "--port", strconv.Itoa(sshd.Port), "--timeout", "5s",
		"--ssh-key", "/var/lib/hydra/queue-runner/.ssh/id_ed25519", "--max-jobs", "4", "--speed-factor", "2",
		"--features", "big-parallel,kvm", "--mandatory-features", "benchmark"}
	r := runPacket(t, srv, nil, nil, args...)
	r.check(t, "machines", 0, nil, []string{"warning: machines: unreachable (a0000000-0000-4000-8000-000000000008): ssh: dial tcp 127.0.0.2:" + strconv.Itoa(sshd.Port)})
	if n := strings.Count(r.stderr, "\n"); n != 1 {
		t.Errorf("machines: stderr has %d lines, want the one warning:\n%s", n, r.stderr)
	}

	golden := filepath.Join("testdata", "machines.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 go test writes it)", err)
	}
	if r.stdout != string(want) {
		t.Errorf("machines = \n%s\nwant (%s)\n%s", r.stdout, golden, want)
	}

	// Each line's last field is the base64 of the one-line public key.
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		f := strings.Fields(line)
		if len(f) != 8 {
			t.Errorf("line %q has %d fields, want 8", line, len(f))
			continue
		}
		key, err := base64.StdEncoding.DecodeString(f[7])
		if err != nil || string(key) != metal.AuthorizedKey(metaltest.Ed25519Signer(t, "nbship machines golden").PublicKey()) {
			t.Errorf("line %q: host key field decodes to %q, %v, want the server's ssh-ed25519 key", line, key, err)
		}
	}

	// Same again: a cron job diffs the output, so it must not change.
	again := runPacket(t, srv, nil, nil, args...)
	if again.stdout != r.stdout {
		t.Errorf("machines run twice differs:\n%s\nthen\n%s", r.stdout, again.stdout)
	}
}

func TestMachines(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
		lines  int
	}{
		{name: "defaults", lines: 3, stdout: []string{"ssh://root@127.0.0.1 aarch64-linux - 1 1 - - c3NoLWVkMjU1MTkg"}, stderr: []string{`plan "n9.huge.custom" is neither arm nor x86`, "unreachable"}},
		{name: "strict", args: []string{"--strict"}, code: 1, lines: 3, stderr: []string{"machines: 2 of 5 builders left out"}},
		{name: "other user and tag", args: []string{"--user", "hydra", "--tag", "arm"}, lines: 1, stdout: []string{"ssh://hydra@127.0.0.1 aarch64-linux"}},
		{name: "no skip tag", args: []string{"--skip-tag", ""}, lines: 4},
		{name: "json", args: []string{"--json"}, stdout: []string{`"uri":"ssh://root@127.0.0.1"`, `"host_key":"ssh-ed25519 AAAA`, `"hostname":"arm64"`}},
		{name: "bad user", args: []string{"--user", "root@x"}, code: 2, stderr: []string{"not a user name"}},
		{name: "bad feature", args: []string{"--features", "a b"}, code: 2, stderr: []string{"must not contain spaces"}},
		{name: "zero jobs", args: []string{"--max-jobs", "0"}, code: 2, stderr: []string{"at least 1"}},
		{name: "arguments", args: []string{"hydra"}, code: 2, stderr: []string{"want no arguments"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, sshd := machinesServer(t)
			args := append([]string{"machines", "--port", strconv.Itoa(sshd.Port)}, tt.args...)
			r := runPacket(t, srv, nil, nil, args...)
			r.check(t, strings.Join(args, " "), tt.code, tt.stdout, tt.stderr)
			if tt.lines > 0 {
				if n := strings.Count(r.stdout, "\n"); n != tt.lines {
					t.Errorf("nbship %s: %d lines, want %d:\n%s", strings.Join(args, " "), n, tt.lines, r.stdout)
				}
			}
			if tt.name == "json" {
				var ms []metal.Machine
				if err := json.Unmarshal([]byte(r.stdout), &ms); err != nil || len(ms) != 3 {
					t.Errorf("machines --json = %d machines, %v, want 3", len(ms), err)
				}
			}
		})
	}
}
