package remote

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
	"github.com/nbship/nbship/internal/testsshd"
)

// The agent tests run the test binary itself as the host's nbship: sshd
// starts `TESTBINARY agent`, which TestMain turns into ServeAgent.

func testBinary(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// agentClient dials s and starts the agent on it.
func agentClient(t *testing.T, s *sshd, h *home) *Client {
	t.Helper()
	c := h.dial(s.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.UseAgent(ctx, testBinary(t)); err != nil {
		t.Fatalf("UseAgent = %v", err)
	}
	if !c.UsesAgent() {
		t.Fatalf("UseAgent did not take; log:\n%s", h.log.String())
	}
	return c
}

// agentPIDs lists the agents running for sshd s (found by the $HOME sshd
// gives them).
func agentPIDs(t *testing.T, s *sshd) []string {
	t.Helper()
	var pids []string
	for _, p := range pgrep(t, testBinary(t)+" agent") {
		pid, _, _ := strings.Cut(p, " ")
		env, err := os.ReadFile(filepath.Join("/proc", pid, "environ"))
		if err == nil && bytes.Contains(env, []byte("\x00HOME="+s.Home+"\x00")) || bytes.HasPrefix(env, []byte("HOME="+s.Home+"\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitNoAgent waits until s has no agent running and the socket's
// directory is gone.
func waitNoAgent(t *testing.T, s *sshd, sock string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		pids := agentPIDs(t, s)
		_, err := os.Stat(filepath.Dir(sock))
		if len(pids) == 0 && errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v after the controller went: agents still running %v, socket directory %s: %v", d, pids, filepath.Dir(sock), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentCommands runs commands through the agent and checks that they
// behave as in sessions of their own (output, status, stderr tail,
// environment, stdin, working directory), and that none of them opened a
// session (started the login shell).
func TestAgentCommands(t *testing.T) {
	t.Parallel()
	s, h := rigPair(t)
	plain := h.dial(s.Addr)
	c := agentClient(t, s, h)
	ctx := context.Background()
	sessions := s.LogCount("Starting session")
	noExec := filepath.Join(t.TempDir(), "not-executable")
	if err := os.WriteFile(noExec, []byte("echo ran\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: many frames and windows
	sum := sha256.Sum256(big)
	tests := []struct {
		name       string
		cmd        Cmd
		wantOut    string
		wantStatus int    // 0: success
		wantErr    string // in the error message
		wantTail   string // in ExitError.Stderr
	}{
		{name: "stdout", cmd: Cmd{Args: []string{"echo", "hello", "it's"}}, wantOut: "hello it's\n"},
		{name: "status", cmd: Cmd{Args: []string{"sh", "-c", "echo partial; echo 'first' >&2; echo 'disk full' >&2; exit 3"}},
			wantOut: "partial\n", wantStatus: 3, wantErr: `exited with status 3: disk full`, wantTail: "first\ndisk full\n"},
		{name: "signal", cmd: Cmd{Args: []string{"sh", "-c", "kill -s TERM $$"}}, wantStatus: 128 + 15},
		{name: "not found", cmd: Cmd{Args: []string{"nbship-no-such-command"}}, wantStatus: 127, wantErr: "nbship-no-such-command"},
		{name: "not executable", cmd: Cmd{Args: []string{noExec}}, wantStatus: 126},
		{name: "env", cmd: Cmd{Args: []string{"sh", "-c", `printf '%s|%s' "$NBSHIP_A" "$NBSHIP_B"`}, Env: map[string]string{"NBSHIP_A": "a b'c", "NBSHIP_B": "$HOME"}},
			wantOut: "a b'c|$HOME"},
		{name: "no stdin", cmd: Cmd{Args: []string{"sh", "-c", "cat; echo end"}}, wantOut: "end\n"},
		{name: "stdin", cmd: Cmd{Args: []string{"sha256sum"}, Stdin: bytes.NewReader(big)}, wantOut: hex.EncodeToString(sum[:]) + "  -\n"},
		{name: "big stdout", cmd: Cmd{Args: []string{"head", "-c", "3000000", "/dev/zero"}}, wantOut: string(make([]byte, 3000000))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			tt.cmd.Stdout = &out
			err := c.Run(ctx, tt.cmd)
			if out.String() != tt.wantOut {
				t.Errorf("stdout = %.80q, want %.80q", out.String(), tt.wantOut)
			}
			var ee *ExitError
			switch {
			case tt.wantStatus == 0 && err != nil:
				t.Errorf("Run = %v, want success", err)
			case tt.wantStatus != 0 && !errors.As(err, &ee):
				t.Errorf("Run = %v, want an *ExitError", err)
			case tt.wantStatus != 0:
				if ee.Status != tt.wantStatus || ee.Host != s.Addr || ee.Command != QuoteArgs(tt.cmd.Args) {
					t.Errorf("ExitError = %+v, want status %d on %s for %q", ee, tt.wantStatus, s.Addr, QuoteArgs(tt.cmd.Args))
				}
				if !strings.Contains(ee.Stderr, tt.wantTail) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Run = %q (stderr %q), want %q in it and %q in stderr", err, ee.Stderr, tt.wantErr, tt.wantTail)
				}
				// The same command in a session of its own fails the same way.
				var pe *ExitError
				if perr := plain.Run(ctx, Cmd{Args: tt.cmd.Args, Env: tt.cmd.Env}); !errors.As(perr, &pe) || pe.Status != ee.Status {
					t.Errorf("in a session of its own: %v, want status %d as through the agent", perr, ee.Status)
				}
			}
		})
	}

	// Pipes: the caller writes stdin and reads stdout.
	p, err := c.Start(ctx, Cmd{Args: []string{"tr", "a-z", "A-Z"}, Pipes: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		io.WriteString(p.Stdin, "shout\n")
		p.Stdin.Close()
	}()
	got, _ := io.ReadAll(p.Stdout)
	if err := p.Wait(); err != nil || string(got) != "SHOUT\n" {
		t.Errorf("Pipes: stdout %q, Wait = %v, want \"SHOUT\\n\", nil", got, err)
	}

	// Same working directory and user as a session of its own.
	for _, args := range [][]string{{"pwd"}, {"id", "-u"}} {
		a, err1 := c.Output(ctx, args...)
		b, err2 := plain.Output(ctx, args...)
		if string(a) != string(b) || err1 != nil || err2 != nil {
			t.Errorf("%s: through the agent %q, %v; in a session %q, %v: want the same", args, a, err1, b, err2)
		}
	}
	// Those ran in sessions of their own: 2 commands, 2 sessions, and
	// one for each failing command above.
	want := 2
	for _, tt := range tests {
		if tt.wantStatus != 0 {
			want++
		}
	}
	if n := s.LogCount("Starting session") - sessions; n != want {
		t.Errorf("%d sessions opened, want %d (none for the commands through the agent)", n, want)
	}
}

// TestAgentNoProcessLeftBehind stops commands running through the agent
// in each way a controller can go away, and checks that nothing is left:
// not the command's children, and (when the connection goes) not the
// agent nor its socket directory.
func TestAgentNoProcessLeftBehind(t *testing.T) {
	t.Parallel()
	tests := []stopCase{{
		name:    "ctx cancel",
		script:  twoSleeps,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  4 * time.Second,
	}, {
		name:    "Process.Close",
		script:  twoSleeps,
		stop:    stopProcessClose,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}, {
		name:    "TERM ignored",
		script:  "trap '' TERM; " + twoSleeps,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  10 * time.Second,
	}, {
		name:    "pipes, ctx cancel",
		script:  twoSleeps,
		pipes:   true,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  4 * time.Second,
	}, {
		name:      "Client.Close",
		script:    twoSleeps,
		stop:      stopClientClose,
		wantErr:   wantAnyErr,
		within:    4 * time.Second,
		agentGone: true,
	}, {
		// No SSH goodbye: sshd just sees the TCP connection end.
		name:      "TCP cut",
		script:    twoSleeps,
		stop:      stopCut,
		wantErr:   wantLost,
		within:    4 * time.Second,
		agentGone: true,
	}, {
		name:      "pipes, TCP cut",
		script:    "trap '' TERM; " + twoSleeps,
		pipes:     true,
		stop:      stopCut,
		wantErr:   wantAnyErr,
		within:    10 * time.Second,
		agentGone: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, h := rigPair(t)
			c := agentClient(t, s, h)
			sock := c.agentLink().sock
			tt.run(t, c)
			if tt.agentGone {
				waitNoAgent(t, s, sock, 10*time.Second)
			} else if len(agentPIDs(t, s)) != 1 {
				t.Errorf("agents running after the command stopped: %v, want the one", agentPIDs(t, s))
			}
		})
	}
}

// TestAgentKilledController kills a controller process (SIGKILL: no
// goodbye of any kind) while a command runs through its agent, and checks
// that nothing is left on the host.
func TestAgentKilledController(t *testing.T) {
	t.Parallel()
	s, h := rigPair(t)
	m := fmt.Sprintf("%09d", rand.IntN(1e9))
	t.Cleanup(func() { killMatching(t, m) })
	cmd := exec.Command(testBinary(t), "-test.run=^TestAgentControllerProcess$")
	cmd.Env = append(os.Environ(), "NBSHIP_TEST_CONTROLLER="+strings.Join([]string{s.Addr, h.dir, m}, "\x1f"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	line, _ := bufio.NewReader(out).ReadString('\n')
	sock, ok := strings.CutPrefix(strings.TrimSpace(line), "running ")
	if !ok {
		t.Fatalf("the controller said %q, want \"running SOCKET\"", line)
	}
	waitRunning(t, "1000."+m)
	if len(agentPIDs(t, s)) != 1 {
		t.Fatalf("agents = %v, want one", agentPIDs(t, s))
	}
	cmd.Process.Signal(syscall.SIGKILL)
	waitGone(t, m, 4*time.Second)
	waitNoAgent(t, s, sock, 10*time.Second)
}

// TestAgentControllerProcess is the controller TestAgentKilledController
// runs and kills; it does nothing on its own.
func TestAgentControllerProcess(t *testing.T) {
	v := os.Getenv("NBSHIP_TEST_CONTROLLER")
	if v == "" {
		return // not a test of its own: TestAgentKilledController runs it (a skip would fail CI)
	}
	f := strings.Split(v, "\x1f")
	addr, dir, m := f[0], f[1], f[2]
	c, err := Dial(context.Background(), addr, Config{Home: dir, ConnectTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.UseAgent(context.Background(), testBinary(t)); err != nil || !c.UsesAgent() {
		t.Fatalf("UseAgent = %v (in use: %v)", err, c.UsesAgent())
	}
	if _, err := c.Start(context.Background(), Cmd{Args: []string{"sh", "-c", fmt.Sprintf("sleep 1000.%[1]s & sleep 1001.%[1]s; wait", m)}}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("running %s\n", c.agentLink().sock)
	time.Sleep(time.Minute)
}

// TestAgentFallback: where the agent cannot serve, UseAgent says so in one
// line and commands run in sessions of their own, leaving nothing behind.
func TestAgentFallback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		extra   []string
		bin     func(t *testing.T) string
		wantLog string
	}{{
		name:    "no streamlocal forwarding",
		extra:   []string{"AllowStreamLocalForwarding no"},
		bin:     testBinary,
		wantLog: "refuses connections to unix sockets",
	}, {
		name:    "DisableForwarding",
		extra:   []string{"DisableForwarding yes"},
		bin:     testBinary,
		wantLog: "refuses connections to unix sockets",
	}, {
		name: "an nbship without agent",
		bin: func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "old-nbship")
			writeScript(t, p, `echo "nbship: unknown command \"$1\"" >&2; exit 2`)
			return p
		},
		wantLog: `unknown command "agent"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := testsshd.Start(t, testsshd.Options{Extra: tt.extra})
			h := newHome(t)
			s.Authorize(h.key.PublicKey())
			h.trust(s)
			c := h.dial(s.Addr)
			ctx := context.Background()
			if err := c.UseAgent(ctx, tt.bin(t)); err != nil {
				t.Fatalf("UseAgent = %v, want nil (a fallback)", err)
			}
			if c.UsesAgent() {
				t.Fatal("UsesAgent() = true, want false")
			}
			log := h.log.String()
			if strings.Count(log, "\n") != 1 || !strings.Contains(log, tt.wantLog) || !strings.Contains(log, "session of its own") || !strings.HasPrefix(log, "ssh: "+s.Addr+": ") {
				t.Errorf("log = %q, want one line about %q", log, tt.wantLog)
			}
			out, err := c.Output(ctx, "echo", "still works")
			if string(out) != "still works\n" || err != nil {
				t.Errorf("Output = %q, %v, want it to work in a session", out, err)
			}
			waitNoAgentPIDs(t, s)
		})
	}
}

func waitNoAgentPIDs(t *testing.T, s *sshd) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(agentPIDs(t, s)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("agent still running after the fallback: %v", agentPIDs(t, s))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentRequest checks the agent's reading of requests.
func TestAgentRequest(t *testing.T) {
	for _, tt := range []struct {
		in      string
		wantErr string
	}{
		{`{"v":1,"argv":["true"]}` + "\n", ""},
		{`{"v":1,"argv":["env"],"env":{"A_1":"x"},"stdin":true}` + "\n", ""},
		{"", "EOF"},
		{`{"v":2,"argv":["true"]}` + "\n", "protocol version 2"},
		{`{"v":1,"argv":[]}` + "\n", "empty argv"},
		{`{"v":1,"argv":[""]}` + "\n", "empty argv"},
		{`{"v":1,"argv":["x"],"env":{"A=B":"x"}}` + "\n", "bad environment variable name"},
		{`{"v":1,"argv":["x"]}`, "reading the request"},
		{"nonsense\n", "bad request"},
		{strings.Repeat("x", maxRequest+10) + "\n", "too long"},
	} {
		_, err := readRequest(bufio.NewReader(strings.NewReader(tt.in)))
		if (tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("readRequest(%.40q) = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

// FuzzAgentRequest: whatever arrives, readRequest returns a valid
// request or an error, and never panics.
func FuzzAgentRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"argv":["true"]}` + "\n"))
	f.Add([]byte(`{"v":1,"argv":["a","b"],"env":{"X":"y"},"stdin":true}` + "\n"))
	f.Add([]byte("\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := readRequest(bufio.NewReader(bytes.NewReader(b)))
		if err == nil && (len(r.Argv) == 0 || r.Argv[0] == "") {
			t.Errorf("readRequest(%q) = %+v, want an error", b, r)
		}
	})
}

// FuzzAgentFrames: the controller's reading of the agent's frames never
// panics nor takes more than a frame's bound.
func FuzzAgentFrames(f *testing.F) {
	f.Add([]byte{frameStdout, 0, 0, 0, 2, 'h', 'i', frameExit, 0, 0, 0, 4, 0, 0, 0, 3})
	f.Add([]byte{frameExit, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			_, p, err := readFrame(r, nil)
			if err != nil {
				return
			}
			if len(p) > maxFrame {
				t.Fatalf("frame of %d bytes", len(p))
			}
		}
	})
}

// TestInstallStartsAgent: an upload with InstallOptions.Agent goes on as
// the agent in the same session, so a host without nbship costs two
// sessions (two login shells) in all: finding, then uploading and serving.
func TestInstallStartsAgent(t *testing.T) {
	t.Parallel()
	s, h, c := rigClient(t)
	ctx := context.Background()
	self := testBinary(t)
	before := s.LogCount("Starting session")
	bin, err := c.InstallNbship(ctx, InstallOptions{Version: "dev", Binary: func(string) (string, error) { return self, nil }, Agent: true})
	if err != nil {
		t.Fatalf("InstallNbship = %v", err)
	}
	if !c.UsesAgent() {
		t.Fatalf("UsesAgent() = false after an upload with Agent; log:\n%s", h.log.String())
	}
	if err := c.UseAgent(ctx, bin); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Output(ctx, "sh", "-c", "echo ok"); string(out) != "ok\n" || err != nil {
		t.Errorf("Output through the agent = %q, %v", out, err)
	}
	if n := s.LogCount("Starting session") - before; n != 2 {
		t.Errorf("%d sessions for an upload and a command, want 2", n)
	}
	if !strings.Contains(h.log.String(), "uploaded nbship") {
		t.Errorf("log = %q, want the upload noted", h.log.String())
	}

	// An uploaded nbship that has no agent: installed all the same, and
	// the fallback says so.
	h2 := newHome(t)
	s.Authorize(h2.key.PublicKey())
	h2.trust(s)
	c2 := h2.dial(s.Addr)
	old := filepath.Join(t.TempDir(), "nbship")
	writeScript(t, old, `echo "nbship: unknown command \"$1\"" >&2; exit 2`)
	bin, err = c2.InstallNbship(ctx, InstallOptions{Version: "dev", Binary: func(string) (string, error) { return old, nil }, Agent: true})
	if err != nil || c2.UsesAgent() || !strings.Contains(h2.log.String(), "agent did not start") {
		t.Errorf("InstallNbship(an nbship without agent) = %q, %v, UsesAgent %v, log %q; want it installed and the fallback noted", bin, err, c2.UsesAgent(), h2.log.String())
	}
}

// TestLifeline: the agent stops at EOF on its stdin, and when nothing came
// on it for lifelineTimeout (a connection dead without a word); beats
// keep it going.
func TestLifeline(t *testing.T) {
	old := lifelineTimeout
	lifelineTimeout = 300 * time.Millisecond
	defer func() { lifelineTimeout = old }()

	r, w := io.Pipe()
	lost := make(chan struct{})
	var log testbin.Buffer
	go watchLifeline(r, &log, lost)
	for range 10 { // 1 s of beats, three times the timeout
		w.Write([]byte{'\n'})
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case <-lost:
		t.Fatal("lifeline lost while the controller beat")
	default:
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("lifeline not lost 10s after the beats stopped")
	}
	if !strings.Contains(log.String(), "nothing from the controller") {
		t.Errorf("log = %q, want why the agent stops", log.String())
	}

	r, w = io.Pipe()
	lost = make(chan struct{})
	lifelineTimeout = time.Hour
	go watchLifeline(r, io.Discard, lost)
	w.Close()
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("lifeline not lost at EOF")
	}
}

// TestAgentChannelOpenedAhead: each command through the agent finds its
// channel already open (the probe's for the first, then one each command
// opened in the background for the next), so that starting it costs no
// round trip of its own; a spare too old for the agent to still wait on is
// replaced by a new channel, and the command runs all the same.
func TestAgentChannelOpenedAhead(t *testing.T) {
	t.Parallel()
	s, h := rigPair(t)
	c := agentClient(t, s, h)
	ctx := context.Background()
	a := c.agentLink()
	spare := func() *spareConn {
		t.Helper()
		a.mu.Lock()
		sp := a.spare
		a.mu.Unlock()
		if sp == nil {
			t.Fatal("no channel opened ahead")
		}
		select {
		case <-sp.ready:
		case <-time.After(10 * time.Second):
			t.Fatal("the channel opened ahead is still opening after 10 s")
		}
		if sp.err != nil {
			t.Fatalf("the channel opened ahead failed: %v", sp.err)
		}
		return sp
	}
	first := spare()
	for i := range 3 {
		out, err := c.Output(ctx, "echo", fmt.Sprint(i))
		if err != nil || string(out) != fmt.Sprintf("%d\n", i) {
			t.Fatalf("command %d: %q, %v", i, out, err)
		}
		next := spare()
		if next == first {
			t.Fatalf("command %d did not take the channel opened ahead", i)
		}
		first = next
	}
	// Stale: the command gets a new channel, not the old one.
	a.mu.Lock()
	a.spare.opened = time.Now().Add(-spareMaxAge)
	stale := a.spare
	a.mu.Unlock()
	if out, err := c.Output(ctx, "echo", "fresh"); err != nil || string(out) != "fresh\n" {
		t.Fatalf("after a stale spare: %q, %v", out, err)
	}
	if _, err := stale.conn.Write([]byte("x")); err == nil {
		t.Error("the stale spare is still open")
	}
}
