package hetznertest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/internal/testbin"
)

const sshdPath = "/usr/sbin/sshd"

// SSHD is a real OpenSSH server on 127.0.0.1 that plays a new server's
// rescue system: it lets root in with the key in Home/.ssh/id_ed25519.
type SSHD struct {
	Addr    string // 127.0.0.1:PORT
	Port    int
	HostKey ssh.PublicKey
	Home    string // a client home: .ssh/id_ed25519 (and .pub), no known_hosts yet
	PubKey  string // the client key's authorized_keys line
	Log     string // sshd's log file
}

// StartSSHD starts sshd; it is stopped when the test ends. Without root
// or sshd the test is skipped (a failure where NBSHIP_REQUIRE_RIG=1).
func StartSSHD(t testing.TB) *SSHD {
	t.Helper()
	if os.Geteuid() != 0 {
		testbin.Missing(t, "sshd logs in as root: the test must run as root")
	}
	if _, err := os.Stat(sshdPath); err != nil {
		testbin.Missing(t, "no OpenSSH server: %v (apt-get install openssh-server)", err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &SSHD{Home: filepath.Join(dir, "home"), Log: filepath.Join(dir, "sshd.log")}
	hostKey := filepath.Join(dir, "ssh_host_ed25519_key")
	s.HostKey = writeKey(t, hostKey).PublicKey()
	client := writeKey(t, filepath.Join(s.Home, ".ssh", "id_ed25519"))
	s.PubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(client.PublicKey())))
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authKeys, []byte(s.PubKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s.Port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		conf := filepath.Join(dir, "sshd_config")
		lines := []string{
			"ListenAddress " + s.Addr,
			"HostKey " + hostKey,
			"PidFile none",
			"UsePAM no",
			"StrictModes no",
			"AuthorizedKeysFile " + authKeys,
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"UseDNS no",
			"LogLevel VERBOSE",
			"SetEnv HOME=" + dir,
		}
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(s.Log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sshdPath, "-D", "-e", "-f", conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("starting sshd: %v", err)
		}
		logf.Close()
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		pgid := cmd.Process.Pid
		stop := func() {
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-exited
		}
		if waitFor(s.Log, "Server listening on", exited) {
			t.Cleanup(stop)
			return s
		}
		stop()
		b, _ := os.ReadFile(s.Log)
		if attempt < 3 && bytes.Contains(b, []byte("Address already in use")) {
			continue
		}
		t.Fatalf("sshd did not start:\n%s", b)
	}
}

// waitFor waits until the log holds want or sshd exits.
func waitFor(log, want string, exited <-chan struct{}) bool {
	for range 500 {
		b, _ := os.ReadFile(log)
		if bytes.Contains(b, []byte(want)) {
			return true
		}
		select {
		case <-exited:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return false
}

func writeKey(t testing.TB, path string) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(s.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}
