package remote

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/internal/testsshd"
)

func randomHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dialThenTouch dials and, if that works, runs a command that creates a
// file: the file proves whether any command ran.
func dialThenTouch(t *testing.T, h *home, dest string, cfg Config, file string) error {
	t.Helper()
	c, err := Dial(context.Background(), dest, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Run(context.Background(), Cmd{Args: []string{"touch", file}})
}

func TestUnknownHostRefused(t *testing.T) {
	t.Parallel()
	s, h := loginPair(t)
	// known_hosts has other hosts, but not this one.
	h.appendFile(filepath.Join(h.ssh, "known_hosts"), knownhosts.Line([]string{"other.example:2222"}, randomHostKey(t))+"\n")
	file := filepath.Join(s.Dir, "ran")

	err := dialThenTouch(t, h, s.Addr, h.config(), file)
	var hk *HostKeyError
	if !errors.As(err, &hk) {
		t.Fatalf("Dial(unknown host) = %v, want *HostKeyError", err)
	}
	fp := ssh.FingerprintSHA256(s.HostKey)
	want := HostKeyError{
		Host: s.Addr, Addr: "[127.0.0.1]:" + strconv.Itoa(s.Port), Fingerprint: fp,
		KeyType: "ssh-ed25519", File: filepath.Join(h.ssh, "known_hosts"),
	}
	if *hk != want {
		t.Errorf("Dial(unknown host) = %+v, want %+v", *hk, want)
	}
	for _, sub := range []string{s.Addr, fp, "ssh-keyscan", "--accept-new"} {
		if !strings.Contains(err.Error(), sub) {
			t.Errorf("Dial(unknown host) error %q does not mention %q", err, sub)
		}
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("a command ran on a host with an unknown key")
	}
	if n := s.LogCount("Accepted publickey"); n != 0 {
		t.Errorf("sshd accepted %d logins from a client that should have stopped at the host key", n)
	}
}

func TestChangedHostKeyRefused(t *testing.T) {
	t.Parallel()
	s, h := loginPair(t)
	kh := filepath.Join(h.ssh, "known_hosts")
	h.appendFile(kh, "# comment\n"+knownhosts.Line([]string{"other.example"}, randomHostKey(t))+"\n")
	h.appendFile(kh, knownhosts.Line([]string{s.Addr}, randomHostKey(t))+"\n")
	before, _ := os.ReadFile(kh)
	file := filepath.Join(s.Dir, "ran")

	for _, acceptNew := range []bool{false, true} {
		cfg := h.config()
		cfg.AcceptNew = acceptNew
		err := dialThenTouch(t, h, s.Addr, cfg, file)
		var hk *HostKeyError
		if !errors.As(err, &hk) || !hk.Changed || hk.Line != 3 || hk.File != kh || hk.Fingerprint != ssh.FingerprintSHA256(s.HostKey) {
			t.Fatalf("Dial(changed key, AcceptNew=%v) = %#v, want a changed-key error for line 3 of %s", acceptNew, err, kh)
		}
		for _, sub := range []string{"CHANGED", "man-in-the-middle", "remove line 3 of " + kh, hk.Fingerprint} {
			if !strings.Contains(err.Error(), sub) {
				t.Errorf("Dial(changed key) error %q does not mention %q", err, sub)
			}
		}
	}
	if after, _ := os.ReadFile(kh); string(after) != string(before) {
		t.Errorf("known_hosts changed after refusing a changed key:\n%s", after)
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("a command ran on a host with a changed key")
	}
}

func TestRevokedHostKeyRefused(t *testing.T) {
	t.Parallel()
	s, h := loginPair(t)
	h.trust(s)
	h.appendFile(filepath.Join(h.ssh, "known_hosts"), "@revoked * "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKey)))+"\n")
	_, err := Dial(context.Background(), s.Addr, h.config())
	var hk *HostKeyError
	if !errors.As(err, &hk) || !hk.Revoked || hk.Line != 2 {
		t.Fatalf("Dial(revoked key) = %v, want a revoked-key error for line 2", err)
	}
}

func TestAcceptNew(t *testing.T) {
	t.Parallel()
	s, h := loginPair(t)
	// No ~/.ssh at all: AcceptNew makes it, 0700, and known_hosts, 0600.
	dir := t.TempDir()
	kh := filepath.Join(dir, "new", "known_hosts")
	cfg := h.config()
	cfg.KnownHosts = []string{kh}
	cfg.AcceptNew = true
	c := h.dialConfig(s.Addr, cfg)
	if _, err := c.Output(context.Background(), "true"); err != nil {
		t.Fatalf("Output(true) = %v", err)
	}
	b, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	if want := knownhosts.Line([]string{s.Addr}, s.HostKey) + "\n"; string(b) != want {
		t.Errorf("known_hosts = %q, want %q", b, want)
	}
	for path, mode := range map[string]os.FileMode{kh: 0o600, filepath.Dir(kh): 0o700 | os.ModeDir} {
		if st, err := os.Stat(path); err != nil || st.Mode() != mode {
			t.Errorf("mode of %s = %v, want %v", path, st.Mode(), mode)
		}
	}
	if log := h.log.String(); strings.Count(log, "\n") != 1 || !strings.Contains(log, ssh.FingerprintSHA256(s.HostKey)) {
		t.Errorf("log = %q, want one line with the fingerprint", log)
	}

	// Now it is known: no AcceptNew needed, nothing more added.
	cfg.AcceptNew = false
	h.dialConfig(s.Addr, cfg)
	if b2, _ := os.ReadFile(kh); string(b2) != string(b) {
		t.Errorf("known_hosts after second Dial = %q, want %q", b2, b)
	}
}

// TestKnownHostsForms checks hashed entries, the [host]:port form, the
// UserKnownHostsFile of the config, and that the key type we know is the
// one the server is asked for.
func TestKnownHostsForms(t *testing.T) {
	t.Parallel()
	// A server with three host keys: an ed25519 entry only works if the
	// client asks for ed25519 first (Go's default prefers ECDSA).
	dir := t.TempDir()
	extra := []string{}
	keys := map[string]ssh.PublicKey{}
	for typ, gen := range map[string]func() (crypto.Signer, error){
		"ecdsa": func() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) },
		"rsa":   func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, 2048) },
	} {
		priv, err := gen()
		if err != nil {
			t.Fatal(err)
		}
		block, err := ssh.MarshalPrivateKey(priv, "")
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, "host_"+typ)
		if err := os.WriteFile(f, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := ssh.NewPublicKey(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		keys[typ] = k
		extra = append(extra, "HostKey "+f)
	}
	s := testsshd.Start(t, testsshd.Options{Extra: extra})
	keys["ed25519"] = s.HostKey

	for typ, key := range keys {
		for _, hashed := range []bool{false, true} {
			name := typ
			if hashed {
				name += " hashed"
			}
			t.Run(name, func(t *testing.T) {
				h := newHome(t)
				s.Authorize(h.key.PublicKey())
				host := knownhosts.Normalize(s.Addr)
				if hashed {
					host = knownhosts.HashHostname(host)
				}
				kh := filepath.Join(h.dir, "elsewhere", "hosts")
				if err := os.MkdirAll(filepath.Dir(kh), 0o700); err != nil {
					t.Fatal(err)
				}
				h.appendFile(kh, host+" "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))+"\n")
				h.sshConfig("Host *", "  UserKnownHostsFile ~/elsewhere/hosts")
				c := h.dial(s.Addr)
				if _, err := c.Output(context.Background(), "true"); err != nil {
					t.Fatalf("Output(true) = %v", err)
				}
			})
		}
	}
}

func TestHostKeyAlgorithms(t *testing.T) {
	t.Parallel()
	ed := randomHostKey(t)
	dir := t.TempDir()
	kh := filepath.Join(dir, "known_hosts")
	lines := knownhosts.Line([]string{"a.example"}, ed) + "\n" +
		"@cert-authority *.example " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(randomHostKey(t)))) + "\n"
	if err := os.WriteFile(kh, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	hk, err := newHostKeys(&target{dest: "a.example", hostname: "a.example", port: 22, knownHosts: []string{kh}}, Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := hk.algorithms()
	if len(got) < 7 || got[0] != ssh.CertAlgoED25519v01 || got[6] != ssh.KeyAlgoED25519 {
		t.Errorf("algorithms() = %q, want certificates first, then ssh-ed25519", got)
	}
}
