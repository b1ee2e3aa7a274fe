package remote

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testsshd"
)

// TestProxyCommandAgreesWithOpenSSH runs OpenSSH's ssh and nbship through
// the same ProxyCommands (nc, ssh -W through a jump host, failing ones)
// and jump chains, and requires the same decision; the commands log
// their arguments, which must be the same too.
func TestProxyCommandAgreesWithOpenSSH(t *testing.T) {
	t.Parallel()
	sshBin := needTool(t, "ssh")
	needTool(t, "nc")
	dst := testsshd.Start(t, testsshd.Options{})
	jump := testsshd.Start(t, testsshd.Options{})
	h := newHome(t)
	for _, s := range []*sshd{dst, jump} {
		s.Authorize(h.key.PublicKey())
		h.trust(s)
	}
	mark := marker(t)
	t.Cleanup(func() { killMatching(t, mark) })
	dir := t.TempDir()
	used := filepath.Join(dir, "used")
	// A proxy that notes its arguments, leaves a child running (which
	// must not outlive the connection) and becomes nc.
	proxy := filepath.Join(dir, "proxy-"+mark)
	script := "#!/bin/sh\necho \"$*\" >>" + used + "\nsh -c 'while :; do sleep 1; done' " + mark + "-child </dev/null >/dev/null 2>&1 &\nexec nc \"$1\" \"$2\"\n"
	if err := os.WriteFile(proxy, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config")
	port := strconv.Itoa(dst.Port)
	lines := []string{
		"Host viapc",
		"  HostName 127.0.0.1", "  Port " + port,
		"  ProxyCommand " + proxy + " %h %p %r %n %%",
		"Host viassh",
		"  HostName 127.0.0.1", "  Port " + port,
		"  ProxyCommand " + sshBin + " -F " + config + " -W %h:%p jumphost",
		"Host jumphost",
		"  HostName 127.0.0.1", "  Port " + strconv.Itoa(jump.Port),
		"Host jumphostpc",
		"  HostName 127.0.0.1", "  Port " + strconv.Itoa(jump.Port),
		"  ProxyCommand " + proxy + " %h %p",
		"Host chained",
		"  HostName 127.0.0.1", "  Port " + port,
		"  ProxyJump jumphostpc",
		// A later hop is reached through the one before: its own
		// ProxyCommand is not used.
		"Host laterhop",
		"  HostName 127.0.0.1", "  Port " + port,
		"  ProxyJump jumphost,failing",
		"Host failing",
		"  HostName 127.0.0.1", "  Port " + strconv.Itoa(jump.Port),
		"  ProxyCommand sh -c 'echo no route to bastion.example >&2; exit 3'",
		"Host missing",
		"  ProxyCommand /nonexistent/proxy-" + mark + " %h",
		"Host badtoken",
		"  ProxyCommand nc %h %z",
		"Host *",
		"  User root",
		"  IdentityFile " + filepath.Join(h.ssh, "id_ed25519"),
		"  IdentitiesOnly yes",
		"  UserKnownHostsFile " + filepath.Join(h.ssh, "known_hosts"),
		"  GlobalKnownHostsFile /dev/null",
		"  BatchMode yes",
		"  ConnectTimeout 10",
	}
	if err := os.WriteFile(config, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		dest    string
		connect bool
		errHas  []string // in nbship's error
	}{
		{dest: "viapc", connect: true},
		{dest: "viassh", connect: true},
		{dest: "chained", connect: true},
		{dest: "laterhop", connect: true},
		{dest: "failing", errHas: []string{"failing", "echo no route", "exited with status 3", ": no route to bastion.example"}},
		{dest: "missing", errHas: []string{"missing", "/nonexistent/proxy-" + mark + " missing", "status 127", "/nonexistent/proxy-" + mark + ":"}},
		{dest: "badtoken", errHas: []string{"badtoken", "unknown token %z"}},
	}
	for _, tt := range tests {
		t.Run(tt.dest, func(t *testing.T) {
			os.Remove(used)
			cmd := exec.Command(sshBin, "-F", config, tt.dest, "true")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			sshErr := cmd.Run()
			if got := sshErr == nil; got != tt.connect {
				t.Fatalf("OpenSSH connected = %v, this test expected %v: %v\n%s", got, tt.connect, sshErr, stderr.String())
			}
			sshUsed, _ := os.ReadFile(used)
			// OpenSSH's own proxy's child is left to it; only ours count.
			killMatching(t, mark+"-child")

			for _, builtin := range []bool{false, true} {
				os.Remove(used)
				cfg := h.config()
				cfg.SSHConfig, cfg.BuiltinSSHConfig = config, builtin
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				c, err := Dial(ctx, tt.dest, cfg)
				cancel()
				if got := err == nil; got != tt.connect {
					t.Errorf("Dial(%s) (built-in parser %v) = %v, OpenSSH connected = %v", tt.dest, builtin, err, tt.connect)
					continue
				}
				if err != nil {
					if strings.Contains(err.Error(), "\n") {
						t.Errorf("Dial(%s) error has more than one line: %q", tt.dest, err)
					}
					for _, sub := range tt.errHas {
						if !strings.Contains(err.Error(), sub) {
							t.Errorf("Dial(%s) = %q, want it to mention %q", tt.dest, err, sub)
						}
					}
					continue
				}
				out, err := c.Output(context.Background(), "echo", "through")
				if err != nil || string(out) != "through\n" {
					t.Errorf("Output(echo) through %s = %q, %v", tt.dest, out, err)
				}
				c.Close()
				// The proxy and what it started are gone with the client.
				waitGone(t, mark, 5*time.Second)
				if got, _ := os.ReadFile(used); string(got) != string(sshUsed) {
					t.Errorf("Dial(%s): the proxy ran with %q, under OpenSSH with %q", tt.dest, got, sshUsed)
				}
			}
		})
	}
}
