package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/nbship/nbship/internal/testbin"
)

func nbshipBinary(t testing.TB, goarch string) string { return testbin.Nbship(t, goarch) }

// TestMain also makes the test binary an nbship for the CLI scripts
// (testscript runs it as "nbship" when a script says exec nbship).
func TestMain(m *testing.M) {
	os.Exit(testscript.RunMain(cleanupAfter{m}, map[string]func() int{"nbship": mainCode}))
}

// cleanupAfter removes the binaries the tests built once they have run.
type cleanupAfter struct{ m *testing.M }

func (c cleanupAfter) Run() int {
	defer testbin.Cleanup()
	return c.m.Run()
}

// proc is a running nbship end with its stdin, a line reader on stdout and
// the whole of stderr.
type proc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *testbin.Buffer
	done   chan error
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, bin, args...)
}

// startRecv starts bin's recv on a free loopback port, its pin to come on
// stdin, with args, and returns it, its fingerprint line and its address.
func startRecv(t *testing.T, bin string, args ...string) (r *proc, fingerprint, addr string) {
	t.Helper()
	r = start(t, bin, append([]string{"recv", "--listen", "127.0.0.1:0", "--peer-pin", "-"}, args...)...)
	fingerprint = r.line(t)
	addr, _ = strings.CutPrefix(r.line(t), "listening ")
	return r, fingerprint, addr
}

// startSender starts bin's sender to addr, its pin to come on stdin, with
// args, and returns it and its fingerprint line.
func startSender(t *testing.T, bin, addr string, args ...string) (s *proc, fingerprint string) {
	t.Helper()
	s = start(t, bin, append([]string{"send", "--connect", addr, "--peer-pin", "-"}, args...)...)
	return s, s.line(t)
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
