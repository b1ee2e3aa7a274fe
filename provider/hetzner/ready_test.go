package hetzner

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/provider/hetzner/hetznertest"
	"github.com/nbship/nbship/remote"
)

func TestMain(m *testing.M) {
	// The developer's agent must not take part.
	os.Unsetenv("SSH_AUTH_SOCK")
	os.Exit(m.Run())
}

// TestReadyTrustsOnFirstUse creates a builder on the fake whose address is
// a real sshd, waits for it, and checks that its host key was recorded
// once, said in one line, and that the boot step ran on the connection.
func TestReadyTrustsOnFirstUse(t *testing.T) {
	sshd := hetznertest.StartSSHD(t)
	f := hetznertest.New(t, token)
	f.SetAddress("127.0.0.1")
	c, _ := newClient(t, f)
	r := request()
	r.SSHPublicKey = sshd.PubKey
	s, err := c.Create(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	dest := "root@" + net.JoinHostPort(s.IPv4, strconv.Itoa(sshd.Port))
	var log bytes.Buffer
	var uname string
	o := SSHOptions{Config: remote.Config{Home: sshd.Client}, Interval: 10 * time.Millisecond, Log: &log}
	err = Ready(context.Background(), dest, o, func(ctx context.Context, rc *remote.Client) error {
		out, err := rc.Output(ctx, "uname", "-s")
		uname = strings.TrimSpace(string(out))
		return err
	})
	if err != nil {
		t.Fatalf("Ready = %v\nlog: %s", err, log.String())
	}
	if uname != "Linux" {
		t.Errorf("boot ran uname -s = %q, want Linux", uname)
	}
	kh := filepath.Join(sshd.Client, ".ssh", "known_hosts")
	b, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	want := knownhosts.Line([]string{sshd.Addr}, sshd.HostKey) + "\n"
	if string(b) != want {
		t.Errorf("known_hosts = %q, want %q", b, want)
	}
	if n := strings.Count(log.String(), "added new host key"); n != 1 || !strings.Contains(log.String(), ssh.FingerprintSHA256(sshd.HostKey)) {
		t.Errorf("log = %q, want one line saying the host key was added, with its fingerprint", log.String())
	}

	// Again: the key is known now; nothing is added or said.
	log.Reset()
	if err := Ready(context.Background(), dest, o, nil); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(kh); string(b2) != want || strings.Contains(log.String(), "added") {
		t.Errorf("second Ready: known_hosts %q, log %q; want them unchanged", b2, log.String())
	}
}

// TestReadyRefusesChangedKey: an address known with another key (a
// server that had it before) is refused at once, not waited on.
func TestReadyRefusesChangedKey(t *testing.T) {
	sshd := hetznertest.StartSSHD(t)
	other, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(operatorKey))
	kh := filepath.Join(sshd.Client, ".ssh", "known_hosts")
	if err := os.WriteFile(kh, []byte(knownhosts.Line([]string{sshd.Addr}, other)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	booted := false
	err := Ready(context.Background(), "root@"+sshd.Addr, SSHOptions{Config: remote.Config{Home: sshd.Client}, Interval: 10 * time.Millisecond, Timeout: time.Hour, Log: &log},
		func(context.Context, *remote.Client) error { booted = true; return nil })
	var hk *remote.HostKeyError
	if !errors.As(err, &hk) || !hk.Changed || booted {
		t.Errorf("Ready = %v (booted %v), want a changed host key refused before boot", err, booted)
	}
	if b, _ := os.ReadFile(kh); strings.Count(string(b), "\n") != 1 {
		t.Errorf("known_hosts = %q, want the old line only", b)
	}
}

// TestReadyRefusedKey: a server that does not let our key in is not
// waited on either.
func TestReadyRefusedKey(t *testing.T) {
	sshd := hetznertest.StartSSHD(t)
	stranger := t.TempDir()
	if err := os.CopyFS(stranger, os.DirFS(sshd.Client)); err != nil {
		t.Fatal(err)
	}
	// Another key in the stranger's home.
	other := hetznertest.StartSSHD(t)
	for _, n := range []string{"id_ed25519", "id_ed25519.pub"} {
		b, _ := os.ReadFile(filepath.Join(other.Client, ".ssh", n))
		os.WriteFile(filepath.Join(stranger, ".ssh", n), b, 0o600)
	}
	err := Ready(context.Background(), "root@"+sshd.Addr, SSHOptions{Config: remote.Config{Home: stranger}, Interval: 10 * time.Millisecond, Timeout: time.Hour}, nil)
	if err == nil || !strings.Contains(err.Error(), "refused every key") {
		t.Errorf("Ready = %v, want the refused key said", err)
	}
}

// TestReadyTimeout: nothing answers; the wait ends with the last error.
func TestReadyTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	err = Ready(context.Background(), "root@"+addr, SSHOptions{Config: remote.Config{Home: t.TempDir()}, Interval: 10 * time.Millisecond, Timeout: 200 * time.Millisecond}, nil)
	var te *SSHTimeoutError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "did not answer SSH within 200ms") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Ready = %v, want an SSHTimeoutError with the last error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = Ready(ctx, "root@"+addr, SSHOptions{Config: remote.Config{Home: t.TempDir()}}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Ready(cancelled) = %v, want context.Canceled", err)
	}
}
