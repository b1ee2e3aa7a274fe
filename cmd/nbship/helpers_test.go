package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The nbship binaries built for this test process, one per GOARCH, built on
// first use (the arm64 one only for tests that run it under qemu-user).
var (
	buildMu  sync.Mutex
	binDir   string
	binBuilt = map[string]string{}
)

// nbshipBinary builds cmd/nbship for linux/goarch (once) and returns its path.
func nbshipBinary(t testing.TB, goarch string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := binBuilt[goarch]; ok {
		return p
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "nbship-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binDir = d
	}
	out := filepath.Join(binDir, "nbship-linux-"+goarch)
	cmd := exec.Command(goTool(), "build", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nbship for %s: %v: %s", goarch, err, b)
	}
	binBuilt[goarch] = out
	return out
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// proc is a running nbship end with its stdin, a line reader on stdout and
// the whole of stderr.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *lockedBuffer
	done   chan error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(out), stderr: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
	})
	return p
}

// line reads one stdout line, failing the test after a timeout.
func (p *proc) line(t *testing.T) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := p.stdout.ReadString('\n')
		ch <- res{strings.TrimSuffix(s, "\n"), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("reading a line from %v: %v (stderr: %s)", p.cmd.Args, r.err, p.stderr)
		}
		return r.s
	case <-time.After(30 * time.Second):
		t.Fatalf("no line from %v within 30s (stderr: %s)", p.cmd.Args, p.stderr)
	}
	return ""
}

// rest reads the remaining stdout and waits for the process; it returns
// stdout and the exit error.
func (p *proc) wait(t *testing.T) (string, error) {
	t.Helper()
	ch := make(chan struct{})
	var out []byte
	go func() {
		out, _ = io.ReadAll(p.stdout)
		close(ch)
	}()
	select {
	case <-ch:
	case <-time.After(120 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("%v did not finish within 120s (stderr: %s)", p.cmd.Args, p.stderr)
	}
	return string(out), p.cmd.Wait()
}
