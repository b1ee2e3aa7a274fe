package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestNoRemoteProcessLeftBehind starts a remote command with a child and
// a grandchild (`sleep`s with a unique duration to find them), stops it in
// each way a controller can go away, and checks that nothing with the
// marker is left on the host.
func TestNoRemoteProcessLeftBehind(t *testing.T) {
	t.Parallel()
	tests := []stopCase{{
		name:    "ctx cancel",
		script:  twoSleeps,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  4 * time.Second,
	}, {
		name:    "Client.Close",
		script:  twoSleeps,
		stop:    stopClientClose,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}, {
		name:    "Process.Close",
		script:  twoSleeps,
		stop:    stopProcessClose,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}, {
		// The TCP connection closes under the client: no SSH close, no
		// signal; sshd just sees the connection end.
		name:    "TCP cut",
		script:  twoSleeps,
		stop:    stopCut,
		wantErr: wantLost,
		within:  4 * time.Second,
	}, {
		// A command that ignores TERM gets KILL after the grace period.
		name:    "TERM ignored",
		script:  "trap '' TERM; " + twoSleeps,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  10 * time.Second,
		linger:  true,
	}, {
		// With pipes the command's stdin is the caller's, so there is no
		// watcher; sshd's delivery of the TERM signal request ends a
		// command that would not end on EOF by itself.
		name:    "pipes, signal",
		script:  twoSleeps,
		pipes:   true,
		stop:    stopCancel,
		wantErr: wantCanceled,
		within:  4 * time.Second,
	}, {
		name:    "pipes, Client.Close",
		script:  twoSleeps,
		pipes:   true,
		stop:    stopClientClose,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}, {
		name:    "pipes, Process.Close",
		script:  twoSleeps,
		pipes:   true,
		stop:    stopProcessClose,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}, {
		// With pipes and the connection cut, the command ends on stdin EOF.
		name:    "pipes, TCP cut",
		script:  "cat; echo 1000.%[1]s >/dev/null",
		pipes:   true,
		stop:    stopCut,
		wantErr: wantAnyErr,
		within:  4 * time.Second,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, h := rigPair(t)
			tt.run(t, h.dial(s.Addr))
		})
	}
}

// TestCommandsEndNormally checks that the wrapper leaves nothing behind
// when the command ends by itself, and passes the status on.
func TestCommandsEndNormally(t *testing.T) {
	t.Parallel()
	_, _, c := rigClient(t)
	m := fmt.Sprintf("%09d", rand.IntN(1e9))
	for i := range 5 {
		err := c.Run(context.Background(), Cmd{Args: []string{"sh", "-c", "exit $1", m, fmt.Sprint(i)}})
		var ee *ExitError
		if i == 0 && err != nil || i > 0 && (!errors.As(err, &ee) || ee.Status != i) {
			t.Errorf("Run(exit %d) = %v, want status %d", i, err, i)
		}
	}
	waitGone(t, m, 2*time.Second)
}

// TestStdinStreamed feeds data to a command and reads it back.
func TestStdinStreamed(t *testing.T) {
	t.Parallel()
	_, _, c := rigClient(t)
	data := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	var out strings.Builder
	err := c.Run(context.Background(), Cmd{Args: []string{"sha256sum"}, Stdin: strings.NewReader(data), Stdout: &out})
	if err != nil {
		t.Fatalf("Run(sha256sum) = %v", err)
	}
	if got := strings.Fields(out.String()); len(got) == 0 || got[0] != sha256hex([]byte(data)) {
		t.Errorf("Run(sha256sum) = %q, want %s", out.String(), sha256hex([]byte(data)))
	}

	// A failing reader stops the command instead of ending its input.
	err = c.Run(context.Background(), Cmd{Args: []string{"cat"}, Stdin: io.MultiReader(strings.NewReader("part"), errReader{})})
	if err == nil || !strings.Contains(err.Error(), "reading stdin") {
		t.Errorf("Run(cat) with a failing reader = %v, want a stdin error", err)
	}

	// Pipes: the caller writes and reads.
	p, err := c.Start(context.Background(), Cmd{Args: []string{"tr", "a-z", "A-Z"}, Pipes: true})
	if err != nil {
		t.Fatalf("Start(tr, Pipes) = %v", err)
	}
	go func() {
		io.WriteString(p.Stdin, "hello pipes")
		p.Stdin.Close()
	}()
	b, err := io.ReadAll(p.Stdout)
	if err != nil || string(b) != "HELLO PIPES" {
		t.Errorf("Pipes stdout = %q, %v, want %q", b, err, "HELLO PIPES")
	}
	if err := p.Wait(); err != nil {
		t.Errorf("Wait() = %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// stopCase is one way a controller stops a running command.
type stopCase struct {
	name      string
	script    string // %[1]s is the marker
	pipes     bool
	stop      func(c *Client, p *Process, cancel context.CancelFunc)
	wantErr   func(error) bool
	within    time.Duration
	linger    bool // TERM is ignored: still there right after Wait
	agentGone bool // through the agent: the agent ends too
}

// The scripts and stops the cases share.
const twoSleeps = "sleep 1000.%[1]s & sleep 1001.%[1]s; wait"

var (
	stopCancel       = func(c *Client, p *Process, cancel context.CancelFunc) { cancel() }
	stopClientClose  = func(c *Client, p *Process, cancel context.CancelFunc) { c.Close() }
	stopProcessClose = func(c *Client, p *Process, cancel context.CancelFunc) { p.Close() }
	stopCut          = func(c *Client, p *Process, cancel context.CancelFunc) { c.conn.Close() }
	wantCanceled     = func(err error) bool { return errors.Is(err, context.Canceled) }
	wantAnyErr       = func(err error) bool { return err != nil }
	wantLost         = func(err error) bool { return err != nil && strings.Contains(err.Error(), "connection lost") }
)

// run starts tt.script on c with a marker unique to the test, stops it as
// tt says, and checks Wait's error and that nothing with the marker is
// left on the host within tt.within.
func (tt stopCase) run(t *testing.T, c *Client) {
	t.Helper()
	m := fmt.Sprintf("%09d", rand.IntN(1e9))
	t.Cleanup(func() { killMatching(t, m) }) // if the test failed
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := c.Start(ctx, Cmd{Args: []string{"sh", "-c", fmt.Sprintf(tt.script, m)}, Pipes: tt.pipes})
	if err != nil {
		t.Fatalf("Start = %v", err)
	}
	if tt.pipes {
		go io.Copy(io.Discard, p.Stdout)
	}
	waitRunning(t, "1000."+m)
	tt.stop(c, p, cancel)
	waited := make(chan error, 1)
	go func() { waited <- p.Wait() }()
	select {
	case err := <-waited:
		if !tt.wantErr(err) {
			t.Errorf("Wait() = %v, want the error for %s", err, tt.name)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Wait() still blocked 10s after %s", tt.name)
	}
	if tt.linger && len(pgrep(t, "1000."+m)) == 0 {
		t.Errorf("the command ignoring TERM ended at once; want it killed after the grace period")
	}
	waitGone(t, m, tt.within)
}
