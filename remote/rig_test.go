package remote

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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
	"github.com/nbship/nbship/internal/testsshd"
)

// The tests run a real OpenSSH sshd on 127.0.0.1 with its own host key,
// authorized keys and config, and log in as root. Without root or sshd
// they skip, unless NBSHIP_REQUIRE_RIG=1 (CI) turns the skip into a
// failure.

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

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testbin.Missing(t, "%s not found: %v", name, err)
	}
	return p
}

// sshd is one running OpenSSH server.
type sshd = testsshd.Server

// home is a client-side home directory with ~/.ssh.
type home struct {
	t    *testing.T
	dir  string
	ssh  string // dir/.ssh
	key  ssh.Signer
	log  *testbin.Buffer
	conf []string
}

func newHome(t *testing.T) *home {
	t.Helper()
	dir := t.TempDir()
	h := &home{t: t, dir: dir, ssh: filepath.Join(dir, ".ssh"), log: &testbin.Buffer{}}
	_, h.key = testsshd.WriteKey(t, filepath.Join(h.ssh, "id_ed25519"), "")
	return h
}

// rigPair is an sshd that trusts h's key and an h that knows its host key.
func rigPair(t *testing.T) (*sshd, *home) {
	t.Helper()
	s, h := loginPair(t)
	h.trust(s)
	return s, h
}

// rigClient is rigPair and a Client of h connected to s.
func rigClient(t *testing.T) (*sshd, *home, *Client) {
	t.Helper()
	s, h := rigPair(t)
	return s, h, h.dial(s.Addr)
}

// loginPair is an sshd that trusts h's key and an h that does not know its
// host key yet.
func loginPair(t *testing.T) (*sshd, *home) {
	t.Helper()
	s := testsshd.Start(t, testsshd.Options{})
	h := newHome(t)
	s.Authorize(h.key.PublicKey())
	return s, h
}

func (h *home) trust(s *sshd) {
	h.t.Helper()
	h.appendFile(filepath.Join(h.ssh, "known_hosts"), knownhosts.Line([]string{s.Addr}, s.HostKey)+"\n")
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
	// Registered first, so it runs after serveConns' cleanup has ended the
	// loop: no connection comes after it.
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	serveConns(t, l, func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	})
	return l.Addr().String()
}

// serveConns hands each connection l accepts to handle, until l is closed
// when the test ends; that cleanup waits for the loop to end.
func serveConns(t *testing.T, l net.Listener, handle func(net.Conn)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
