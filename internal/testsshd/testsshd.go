// Package testsshd runs a real OpenSSH sshd on 127.0.0.1 for tests, with
// a host key, authorized keys and config of its own in a temporary
// directory; it lets root in by key. Without root or sshd the test skips,
// or fails where NBSHIP_REQUIRE_RIG=1 (testbin.Missing).
package testsshd

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

// Path is where the OpenSSH server is expected.
const Path = "/usr/sbin/sshd"

// Need ends t (testbin.Missing) unless it runs as root and sshd is
// installed.
func Need(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testbin.Missing(t, "the sshd tests log in as root and must run as root")
	}
	if _, err := os.Stat(Path); err != nil {
		testbin.Missing(t, "no OpenSSH server: %v (apt-get install openssh-server)", err)
	}
}

// Options change the server Start runs.
type Options struct {
	Extra []string // more sshd_config lines; they come first, and sshd takes a keyword's first value
	Env   []string // NAME=value for the commands' environment, besides HOME
	// Prepare, if set, is called with the host key's file before sshd
	// starts and returns more sshd_config lines (a HostCertificate).
	Prepare func(hostKeyFile string) []string
}

// Server is one running sshd.
type Server struct {
	Addr     string // 127.0.0.1:PORT
	Port     int
	HostKey  ssh.PublicKey
	Dir      string // the temporary directory holding its files
	AuthKeys string // its authorized_keys file (empty at the start)
	Log      string // its log file
	Home     string // $HOME of the commands run through it

	t testing.TB
}

// Start runs sshd until the test ends; its log is printed if the test
// failed.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	Need(t)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &Server{
		t:        t,
		Dir:      dir,
		AuthKeys: filepath.Join(dir, "authorized_keys"),
		Log:      filepath.Join(dir, "sshd.log"),
		Home:     filepath.Join(dir, "home"),
	}
	if err := os.Mkdir(s.Home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.AuthKeys, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	_, signer := WriteKey(t, hostKeyFile, "")
	s.HostKey = signer.PublicKey()
	if o.Prepare != nil {
		o.Extra = append(append([]string(nil), o.Extra...), o.Prepare(hostKeyFile)...)
	}

	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		conf := filepath.Join(dir, "sshd_config")
		lines := append(append([]string(nil), o.Extra...),
			"ListenAddress "+s.Addr,
			"HostKey "+hostKeyFile,
			"PidFile none",
			"UsePAM no",
			"StrictModes no",
			"AuthorizedKeysFile "+s.AuthKeys,
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"UseDNS no",
			"LogLevel VERBOSE",
			"MaxStartups 100",
			// Commands must not touch the real /root.
			"SetEnv "+strings.Join(append([]string{"HOME=" + s.Home}, o.Env...), " "),
		)
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.Create(s.Log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(Path, "-D", "-e", "-f", conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		// A group of its own, so that stopping it also ends the
		// per-connection sshd processes.
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
		if s.waitLog("Server listening on", exited, 10*time.Second) {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					b, _ := os.ReadFile(s.Log)
					t.Logf("sshd log:\n%s", b)
				}
			})
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

// waitLog waits until the log holds want, sshd exits or d passes.
func (s *Server) waitLog(want string, exited <-chan struct{}, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(s.Log)
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

// LogCount counts the times sub stands in the log.
func (s *Server) LogCount(sub string) int {
	b, err := os.ReadFile(s.Log)
	if err != nil {
		s.t.Fatal(err)
	}
	return bytes.Count(b, []byte(sub))
}

// Authorize lets pub log in.
func (s *Server) Authorize(pub ssh.PublicKey) {
	s.t.Helper()
	f, err := os.OpenFile(s.AuthKeys, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(ssh.MarshalAuthorizedKey(pub)); err != nil {
		s.t.Fatal(err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WriteKey makes an ed25519 key and writes it to path (encrypted with
// passphrase if that is not empty) and its public half to path.pub.
func WriteKey(t testing.TB, path, passphrase string) (ed25519.PrivateKey, ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(priv, "test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, signer
}
