package remote

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/internal/testbin"
)

// The tests run a real OpenSSH sshd on 127.0.0.1 with its own host key,
// authorized keys and config, and log in as root. Without root or sshd
// they skip, unless NBSHIP_REQUIRE_RIG=1 (CI) turns the skip into a
// failure.

const sshdPath = "/usr/sbin/sshd"

func TestMain(m *testing.M) {
	if len(os.Args) == 2 && os.Args[1] == "agent" {
		// The test binary is the host's nbship for UseAgent (see
		// agent_test.go): sshd runs it as `TESTBINARY agent`.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := ServeAgent(ctx, os.Stdin, os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// The developer's agent must not take part in the tests.
	os.Unsetenv("SSH_AUTH_SOCK")
	os.Exit(m.Run())
}

func needRig(t *testing.T) {
	t.Helper()
	reason := ""
	switch {
	case os.Geteuid() != 0:
		reason = "the sshd tests log in as root and must run as root"
	default:
		if _, err := os.Stat(sshdPath); err != nil {
			reason = "no OpenSSH server: " + err.Error() + " (apt-get install openssh-server)"
		}
	}
	if reason != "" {
		testbin.Missing(t, "%s", reason)
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testbin.Missing(t, "%s not found: %v", name, err)
	}
	return p
}

// sshd is one running OpenSSH server.
type sshd struct {
	t        *testing.T
	dir      string
	addr     string // 127.0.0.1:port
	port     int
	hostKey  ssh.PublicKey
	authKeys string
	logFile  string
	home     string // $HOME of commands run through it
}

type sshdOptions struct {
	extra []string // more sshd_config lines
	env   []string // NAME=value for the commands' environment
	// prepare, if set, is called with the host key's file before sshd
	// starts and returns more sshd_config lines (a HostCertificate).
	prepare func(hostKeyFile string) []string
}

func startSSHD(t *testing.T, o sshdOptions) *sshd {
	t.Helper()
	needRig(t)
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &sshd{
		t:        t,
		dir:      dir,
		authKeys: filepath.Join(dir, "authorized_keys"),
		logFile:  filepath.Join(dir, "sshd.log"),
		home:     filepath.Join(dir, "home"),
	}
	if err := os.Mkdir(s.home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.authKeys, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	_, signer := writeKey(t, hostKeyFile, "")
	s.hostKey = signer.PublicKey()
	if o.prepare != nil {
		o.extra = append(append([]string(nil), o.extra...), o.prepare(hostKeyFile)...)
	}

	for attempt := 0; ; attempt++ {
		s.port = freePort(t)
		s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		conf := filepath.Join(dir, "sshd_config")
		// sshd takes the first value of a keyword: extra lines go first.
		lines := append(append([]string(nil), o.extra...),
			"ListenAddress "+s.addr,
			"HostKey "+hostKeyFile,
			"PidFile none",
			"UsePAM no",
			"StrictModes no",
			"AuthorizedKeysFile "+s.authKeys,
			"PermitRootLogin prohibit-password",
			"PasswordAuthentication no",
			"KbdInteractiveAuthentication no",
			"UseDNS no",
			"LogLevel VERBOSE",
			"MaxStartups 100",
			// Commands must not touch the real /root.
			"SetEnv "+strings.Join(append([]string{"HOME=" + s.home}, o.env...), " "),
		)
		if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.logFile, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(s.logFile, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(sshdPath, "-D", "-e", "-f", conf)
		cmd.Stdout, cmd.Stderr = logf, logf
		// A group of its own, so that cleanup also ends the per-connection
		// sshd processes.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("starting sshd: %v", err)
		}
		logf.Close()
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		ready := s.waitLog("Server listening on", exited, 10*time.Second)
		if ready {
			pgid := cmd.Process.Pid
			t.Cleanup(func() {
				syscall.Kill(-pgid, syscall.SIGKILL)
				<-exited
				if t.Failed() {
					b, _ := os.ReadFile(s.logFile)
					t.Logf("sshd log:\n%s", b)
				}
			})
			return s
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		b, _ := os.ReadFile(s.logFile)
		if attempt < 3 && bytes.Contains(b, []byte("Address already in use")) {
			continue
		}
		t.Fatalf("sshd did not start:\n%s", b)
	}
}

// waitLog waits until the sshd log contains s.
func (s *sshd) waitLog(want string, exited <-chan struct{}, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(s.logFile)
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

// logCount counts the log lines containing sub.
func (s *sshd) logCount(sub string) int {
	b, err := os.ReadFile(s.logFile)
	if err != nil {
		s.t.Fatal(err)
	}
	return bytes.Count(b, []byte(sub))
}

func (s *sshd) authorize(pub ssh.PublicKey) {
	s.t.Helper()
	f, err := os.OpenFile(s.authKeys, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(ssh.MarshalAuthorizedKey(pub)); err != nil {
		s.t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeKey makes an ed25519 key and writes it (encrypted with passphrase
// if not empty) and its .pub.
func writeKey(t *testing.T, path, passphrase string) (ed25519.PrivateKey, ssh.Signer) {
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

// home is a client-side home directory with ~/.ssh.
type home struct {
	t    *testing.T
	dir  string
	ssh  string // dir/.ssh
	key  ssh.Signer
	log  *syncBuffer
	conf []string
}

func newHome(t *testing.T) *home {
	t.Helper()
	dir := t.TempDir()
	h := &home{t: t, dir: dir, ssh: filepath.Join(dir, ".ssh"), log: &syncBuffer{}}
	_, h.key = writeKey(t, filepath.Join(h.ssh, "id_ed25519"), "")
	return h
}

// rigPair is an sshd that trusts h's key and an h that knows its host key.
func rigPair(t *testing.T) (*sshd, *home) {
	t.Helper()
	s := startSSHD(t, sshdOptions{})
	h := newHome(t)
	s.authorize(h.key.PublicKey())
	h.trust(s)
	return s, h
}

func (h *home) trust(s *sshd) {
	h.t.Helper()
	h.appendFile(filepath.Join(h.ssh, "known_hosts"), knownhosts.Line([]string{s.addr}, s.hostKey)+"\n")
}

func (h *home) appendFile(path, text string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		h.t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		h.t.Fatal(err)
	}
}

// sshConfig appends lines to ~/.ssh/config.
func (h *home) sshConfig(lines ...string) {
	h.t.Helper()
	h.appendFile(filepath.Join(h.ssh, "config"), strings.Join(lines, "\n")+"\n")
}

func (h *home) config() Config {
	return Config{Home: h.dir, Log: h.log, ConnectTimeout: 10 * time.Second}
}

func (h *home) dial(dest string) *Client {
	h.t.Helper()
	return h.dialConfig(dest, h.config())
}

func (h *home) dialConfig(dest string, cfg Config) *Client {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, dest, cfg)
	if err != nil {
		h.t.Fatalf("Dial(%q) = %v", dest, err)
	}
	h.t.Cleanup(func() { c.Close() })
	return c
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proxy is a TCP forwarder in front of an sshd that counts connections
// and can freeze (stop forwarding without closing) or cut them.
type proxy struct {
	t      *testing.T
	l      net.Listener
	target string

	mu       sync.Mutex
	accepted int
	frozen   bool
	conns    []net.Conn
	wg       sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, l: l, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) port() int { return p.l.Addr().(*net.TCPAddr).Port }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.accepted++
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(u, c)
		go p.pipe(c, u)
	}
}

// pipe copies until an error; while frozen it holds the data back.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for p.isFrozen() {
				time.Sleep(10 * time.Millisecond)
				if p.isCut(src) {
					return
				}
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (p *proxy) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

func (p *proxy) isCut(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, have := range p.conns {
		if have == c {
			return false
		}
	}
	return true
}

func (p *proxy) freeze() {
	p.mu.Lock()
	p.frozen = true
	p.mu.Unlock()
}

// cut closes every forwarded connection on both sides.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (p *proxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// marker returns a string unique to this test for pgrep -f.
func marker(t *testing.T) string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x", b)
}

// pgrep lists the processes whose command line contains sub, as
// "PID ARGS" (read from /proc, so that procps is not needed).
func pgrep(t *testing.T, sub string) []string {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a zombie
		}
		args := strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		if strings.Contains(args, sub) {
			procs = append(procs, d.Name()+" "+args)
		}
	}
	return procs
}

// killMatching kills what a failed test left running: the processes
// whose command line has this test's unique marker.
func killMatching(t *testing.T, marker string) {
	for _, p := range pgrep(t, marker) {
		pid, _, _ := strings.Cut(p, " ")
		if n, err := strconv.Atoi(pid); err == nil {
			syscall.Kill(n, syscall.SIGKILL)
		}
	}
}

// waitGone waits until no process matches pattern.
func waitGone(t *testing.T, pattern string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		procs := pgrep(t, pattern)
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes still running %v after the command was stopped:\n%s", d, strings.Join(procs, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRunning waits until a process matches pattern.
func waitRunning(t *testing.T, pattern string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(pgrep(t, pattern)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no process matching %q started", pattern)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// silentServer accepts TCP connections and never says a word.
func silentServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
