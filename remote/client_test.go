package remote

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/internal/testsshd"
)

func TestRunOutput(t *testing.T) {
	t.Parallel()
	s, _, c := rigClient(t)
	ctx := context.Background()

	out, err := c.Output(ctx, "echo", "hello", "world")
	if err != nil || string(out) != "hello world\n" {
		t.Fatalf("Output(echo hello world) = %q, %v, want %q, nil", out, err, "hello world\n")
	}

	var stdout, stderr bytes.Buffer
	err = c.Run(ctx, Cmd{
		Args:   []string{"sh", "-c", `echo "out $A"; echo "err $B" >&2`},
		Env:    map[string]string{"A": "a 'b' $c", "B": "x"},
		Stdout: &stdout,
		Stderr: &stderr,
	})
	if err != nil {
		t.Fatalf("Run = %v", err)
	}
	if got, want := stdout.String(), "out a 'b' $c\n"; got != want {
		t.Errorf("Run stdout = %q, want %q", got, want)
	}
	if got, want := stderr.String(), "err x\n"; got != want {
		t.Errorf("Run stderr = %q, want %q", got, want)
	}

	// The remote environment is sshd's, with HOME set by the rig.
	out, err = c.Output(ctx, "sh", "-c", `echo "$HOME"`)
	if err != nil || strings.TrimSpace(string(out)) != s.Home {
		t.Errorf("Output(echo $HOME) = %q, %v, want %q", out, err, s.Home)
	}
}

func TestExitError(t *testing.T) {
	t.Parallel()
	s, _, c := rigClient(t)
	ctx := context.Background()

	tests := []struct {
		args       []string
		status     int
		stderrLine string
	}{
		{[]string{"false"}, 1, ""},
		{[]string{"sh", "-c", "echo first >&2; echo 'error: it broke' >&2; exit 3"}, 3, "error: it broke"},
		{[]string{"no-such-command-nbship"}, 127, "not found"},
	}
	for _, tt := range tests {
		_, err := c.Output(ctx, tt.args...)
		var ee *ExitError
		if !errors.As(err, &ee) {
			t.Errorf("Output(%q) = %v, want *ExitError", tt.args, err)
			continue
		}
		if ee.Status != tt.status || ee.Host != s.Addr || ee.Command != QuoteArgs(tt.args) {
			t.Errorf("Output(%q) = %+v, want status %d host %s command %s", tt.args, ee, tt.status, s.Addr, QuoteArgs(tt.args))
		}
		want := "ssh: " + s.Addr + ": " + strconv.Quote(QuoteArgs(tt.args)) + " exited with status " + strconv.Itoa(tt.status)
		if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Output(%q) error = %q, want prefix %q", tt.args, err, want)
		}
		if !strings.Contains(err.Error(), tt.stderrLine) || !strings.Contains(ee.Stderr, tt.stderrLine) {
			t.Errorf("Output(%q) error = %q, Stderr %q, want them to contain %q", tt.args, err, ee.Stderr, tt.stderrLine)
		}
	}

	// Stderr goes to the caller's writer and is also kept, last 4 KiB.
	var stderr bytes.Buffer
	err := c.Run(ctx, Cmd{Args: []string{"sh", "-c", "head -c 10000 /dev/zero | tr '\\0' x >&2; echo; echo last >&2; exit 2"}, Stderr: &stderr})
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Status != 2 {
		t.Fatalf("Run(big stderr) = %v, want status 2", err)
	}
	if stderr.Len() != 10005 {
		t.Errorf("Run(big stderr) wrote %d bytes to Stderr, want 10005", stderr.Len())
	}
	if len(ee.Stderr) != 4096 || !strings.HasSuffix(ee.Stderr, "xxxlast\n") {
		t.Errorf("ExitError.Stderr = %d bytes ending %q, want 4096 ending %q", len(ee.Stderr), ee.Stderr[max(0, len(ee.Stderr)-10):], "xxxlast\n")
	}
}

func TestConnectionReused(t *testing.T) {
	t.Parallel()
	s, h := rigPair(t)
	p := startProxy(t, s.Addr)
	// The proxy's address must be known too.
	h.sshConfig("Host reuse", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(p.port()), "  HostKeyAlias reuse-target")
	h.appendFile(h.ssh+"/known_hosts", knownhosts.Line([]string{"reuse-target"}, s.HostKey)+"\n")
	c := h.dial("reuse")
	ctx := context.Background()
	for i := range 3 {
		if out, err := c.Output(ctx, "echo", strconv.Itoa(i)); err != nil || string(out) != strconv.Itoa(i)+"\n" {
			t.Fatalf("Output(echo %d) = %q, %v", i, out, err)
		}
	}
	// Concurrent commands share it as well.
	errs := make(chan error, 4)
	for range 4 {
		go func() { errs <- c.Run(ctx, Cmd{Args: []string{"sleep", "0.2"}}) }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Run = %v", err)
		}
	}
	if n := p.count(); n != 1 {
		t.Errorf("TCP connections = %d, want 1", n)
	}
	if n := s.LogCount("Accepted publickey"); n != 1 {
		t.Errorf("sshd accepted %d logins, want 1", n)
	}
}

func TestKeepAliveDetectsDeadConnection(t *testing.T) {
	t.Parallel()
	s, h := rigPair(t)
	p := startProxy(t, s.Addr)
	h.sshConfig("Host frozen", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(p.port()), "  HostKeyAlias ["+"127.0.0.1]:"+strconv.Itoa(s.Port))
	cfg := h.config()
	cfg.KeepAlive = 500 * time.Millisecond
	c := h.dialConfig("frozen", cfg)
	ctx := context.Background()
	if _, err := c.Output(ctx, "true"); err != nil {
		t.Fatalf("Output(true) = %v", err)
	}
	// Keepalives are answered while nothing else happens.
	time.Sleep(time.Second)
	if _, err := c.Output(ctx, "true"); err != nil {
		t.Fatalf("Output(true) after idle = %v", err)
	}

	running := make(chan error, 1)
	go func() { running <- c.Run(ctx, Cmd{Args: []string{"sleep", "30"}}) }()
	time.Sleep(300 * time.Millisecond)
	p.freeze()
	start := time.Now()
	select {
	case err := <-running:
		if err == nil || !strings.Contains(err.Error(), "keepalive") {
			t.Errorf("Run(sleep) on a dead connection = %v, want a keepalive error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run(sleep) on a dead connection still running after 10s")
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("dead connection noticed after %v, want about 3×500ms", d)
	}
	// The next command fails at once.
	start = time.Now()
	_, err := c.Output(ctx, "true")
	if err == nil || !strings.Contains(err.Error(), "connection lost") || time.Since(start) > time.Second {
		t.Errorf("Output(true) on a dead connection = %v after %v, want connection lost at once", err, time.Since(start))
	}
}

func TestDialTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	testsshd.Need(t)
	// A server that accepts and then says nothing.
	l := silentServer(t)
	h := newHome(t)
	cfg := h.config()
	cfg.ConnectTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err := Dial(context.Background(), l, cfg)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Dial(silent server) = %v, want a timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial(silent server) took %v, want about 300ms", d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start = time.Now()
	_, err = Dial(ctx, l, h.config())
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Dial(silent server, cancelled) = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cancelled Dial took %v, want about 200ms", d)
	}
}

func TestClientClosed(t *testing.T) {
	t.Parallel()
	s, _, c := rigClient(t)
	if err := c.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close() = %v", err)
	}
	if _, err := c.Output(context.Background(), "true"); err == nil {
		t.Fatal("Output after Close = nil error")
	}
	if c.Name() != s.Addr {
		t.Errorf("Name() = %q, want %q", c.Name(), s.Addr)
	}
}

func TestHomeFromEnv(t *testing.T) {
	// Not parallel: it sets $HOME.
	s, h := rigPair(t)
	t.Setenv("HOME", h.dir)
	c, err := Dial(context.Background(), s.Addr, Config{})
	if err != nil {
		t.Fatalf("Dial with $HOME = %v", err)
	}
	defer c.Close()
	if _, err := c.Output(context.Background(), "true"); err != nil {
		t.Fatalf("Output(true) = %v", err)
	}
}

func TestMaxSessions(t *testing.T) {
	t.Parallel()
	s := testsshd.Start(t, testsshd.Options{Extra: []string{"MaxSessions 2"}})
	h := newHome(t)
	s.Authorize(h.key.PublicKey())
	h.trust(s)
	c := h.dial(s.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range 2 {
		if _, err := c.Start(ctx, Cmd{Args: []string{"sleep", "30"}}); err != nil {
			t.Fatalf("Start(sleep) = %v", err)
		}
	}
	_, err := c.Output(context.Background(), "true")
	if err == nil || !strings.Contains(err.Error(), "MaxSessions") {
		t.Errorf("Output(true) with every session taken = %v, want a MaxSessions error", err)
	}
}
