package remote

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/nbship/nbship/internal/testsshd"
)

// startAgent serves keys as ssh-agent does, on a unix socket.
func startAgent(t *testing.T, keys ...any) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, l, func(c net.Conn) {
		go func() {
			defer c.Close()
			agent.ServeAgent(kr, c)
		}()
	})
	return sock
}

func TestSSHConfigAlias(t *testing.T) {
	t.Parallel()
	s := testsshd.Start(t, testsshd.Options{})
	h := newHome(t)
	h.trust(s)
	// Only the key the alias names is authorized, and it lives where no
	// default would find it.
	_, key := testsshd.WriteKey(t, filepath.Join(h.dir, "keys", "builder"), "")
	s.Authorize(key.PublicKey())
	h.sshConfig(
		// Absolute: ssh -G takes a relative one under the home of the
		// password database, not this test's $HOME.
		"Include "+filepath.Join(h.ssh, "conf.d", "*.conf"),
		"Host !nothing builder",
		"  User nobody-overridden-below",
	)
	h.appendFile(filepath.Join(h.ssh, "conf.d", "builder.conf"), strings.Join([]string{
		"Host builder",
		"  HostName 127.0.0.1",
		"  Port " + strconv.Itoa(s.Port),
		"  User root",
		"  IdentityFile %d/keys/%n",
	}, "\n")+"\n")
	// The Include comes first, so its User wins (first value counts).
	c := h.dial("builder")
	if out, err := c.Output(context.Background(), "id", "-un"); err != nil || string(out) != "root\n" {
		t.Fatalf("Output(id -un) = %q, %v, want root", out, err)
	}
	if c.Name() != "builder" {
		t.Errorf("Name() = %q, want builder", c.Name())
	}
	if n := s.LogCount("Accepted publickey for root from 127.0.0.1 port"); n != 1 {
		t.Errorf("logins = %d, want 1", n)
	}
	if !strings.Contains(readFile(t, s.Log), ssh.FingerprintSHA256(key.PublicKey())) {
		t.Error("sshd did not log the alias's key")
	}

	// The user in the destination beats the config.
	_, err := Dial(context.Background(), "nobody@builder", h.config())
	if err == nil || !strings.Contains(err.Error(), "user nobody") {
		t.Errorf("Dial(nobody@builder) = %v, want an authentication error for user nobody", err)
	}
}

func TestIdentities(t *testing.T) {
	t.Parallel()
	s := testsshd.Start(t, testsshd.Options{})
	h := newHome(t) // its default id_ed25519 is NOT authorized here
	h.trust(s)
	authorizedPriv, authorized := testsshd.WriteKey(t, filepath.Join(h.ssh, "agentkey"), "secret")
	s.Authorize(authorized.PublicKey())
	_, stranger := testsshd.WriteKey(t, filepath.Join(h.ssh, "stranger"), "")
	_ = stranger
	sock := startAgent(t, authorizedPriv)
	port := strconv.Itoa(s.Port)
	h.sshConfig(
		"Host agent", "  HostName 127.0.0.1", "  Port "+port, "  IdentityAgent "+sock,
		// Names a key the host does not accept: the agent's key must not
		// be offered behind its back.
		"Host only", "  HostName 127.0.0.1", "  Port "+port, "  IdentityAgent "+sock, "  IdentityFile ~/.ssh/stranger",
		"Host onlyyes", "  HostName 127.0.0.1", "  Port "+port, "  IdentityAgent "+sock, "  IdentitiesOnly yes",
		// Names the encrypted key the agent holds: the agent signs.
		"Host named", "  HostName 127.0.0.1", "  Port "+port, "  IdentityAgent "+sock, "  IdentityFile ~/.ssh/agentkey",
		// The same without an agent: a clear error, no prompt.
		"Host noagent", "  HostName 127.0.0.1", "  Port "+port, "  IdentityAgent none", "  IdentityFile ~/.ssh/agentkey",
	)
	tests := []struct {
		dest    string
		extra   []string
		wantErr string // "" = works
	}{
		{"agent", nil, ""},
		{"only", nil, "refused every key"},
		{"onlyyes", nil, "refused every key"},
		{"named", nil, ""},
		{"noagent", nil, "ssh-add " + filepath.Join(h.ssh, "agentkey")},
		// An extra identity (ssh -i) is offered first, whatever the config.
		{"noagent", []string{filepath.Join(h.ssh, "stranger"), "~/.ssh/agentkey.pub.missing"}, "no such file"},
	}
	for _, tt := range tests {
		cfg := h.config()
		cfg.IdentityFiles = tt.extra
		c, err := Dial(context.Background(), tt.dest, cfg)
		if err == nil {
			_, err = c.Output(context.Background(), "true")
			c.Close()
		}
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("Dial(%s, -i %q) = %v, want success", tt.dest, tt.extra, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("Dial(%s, -i %q) = %v, want an error containing %q", tt.dest, tt.extra, err, tt.wantErr)
		}
	}
	var hk *HostKeyError
	if _, err := Dial(context.Background(), "only", h.config()); errors.As(err, &hk) {
		t.Errorf("Dial(only) = %v, want an authentication error", err)
	}
}

func TestAgentFromEnvironment(t *testing.T) {
	// Not parallel: it sets SSH_AUTH_SOCK.
	s := testsshd.Start(t, testsshd.Options{})
	h := newHome(t)
	h.trust(s)
	priv, signer := testsshd.WriteKey(t, filepath.Join(t.TempDir(), "k"), "")
	s.Authorize(signer.PublicKey())
	t.Setenv("SSH_AUTH_SOCK", startAgent(t, priv))
	c := h.dial(s.Addr)
	if _, err := c.Output(context.Background(), "true"); err != nil {
		t.Fatalf("Output(true) with the agent of SSH_AUTH_SOCK = %v", err)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
