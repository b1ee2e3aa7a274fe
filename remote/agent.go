package remote

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/internal/tail"
)

// agentLink is the Client's long-lived session to `nbship agent` on the
// host, and the socket it listens on.
type agentLink struct {
	sock  string
	sess  *ssh.Session
	stdin io.WriteCloser // the agent's lifeline: closed, the agent ends
	tail  *tail.Buffer   // its stderr
	done  chan struct{}  // closed when the session ended

	mu    sync.Mutex
	spare *spareConn // the next command's channel, opened ahead
}

// spareConn is a channel to the agent opened before a command needs it:
// a command then starts with no round trip of its own to open a channel
// (see docs/design.md, "Round trips of set-up").
type spareConn struct {
	ready  chan struct{} // closed when the open finished
	conn   net.Conn
	err    error
	opened time.Time
}

// spareMaxAge is how long a spare channel is used after it opened: the
// agent gives a connection a minute to send its request.
const spareMaxAge = 30 * time.Second

// openSpare opens a channel to the agent in the background.
func (c *Client) openSpare(a *agentLink) *spareConn {
	s := &spareConn{ready: make(chan struct{})}
	go func() {
		defer close(s.ready)
		s.conn, s.err = c.ssh.DialContext(context.Background(), "unix", a.sock)
		s.opened = time.Now()
	}()
	return s
}

// agentConn returns a channel to the agent for one command: the spare
// opened ahead when it is there and fresh, else a new one; and it opens the
// next spare.
func (c *Client) agentConn(ctx context.Context, a *agentLink) (net.Conn, error) {
	a.mu.Lock()
	s := a.spare
	a.spare = nil
	select {
	case <-a.done:
	default:
		a.spare = c.openSpare(a)
	}
	a.mu.Unlock()
	if s != nil {
		select {
		case <-s.ready:
			if s.err == nil && time.Since(s.opened) < spareMaxAge {
				return s.conn, nil
			}
			if s.conn != nil {
				s.conn.Close()
			}
		case <-ctx.Done():
			go func() {
				<-s.ready
				if s.conn != nil {
					s.conn.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
	return c.ssh.DialContext(ctx, "unix", a.sock)
}

// agentStartWait bounds how long the agent may take to say where it
// listens (the login shell runs first).
const agentStartWait = 60 * time.Second

// UseAgent starts `BIN agent` on the host in one session that lives as
// long as the Client, and from then on runs every command Start and Run
// get through it: each over a new channel to the agent's unix socket
// (direct-streamlocal@openssh.com), so the host's login shell is not
// started again (see docs/design.md, "One session per host"). bin is the
// host's nbship, as InstallNbship returned it.
//
// Where that cannot work (the host's sshd refuses streamlocal forwarding,
// or that nbship has no agent), UseAgent writes one line saying so to
// Config.Log and returns nil: commands then run in sessions of their own,
// as without it. It fails only when ctx is done or the connection is
// gone.
func (c *Client) UseAgent(ctx context.Context, bin string) error {
	_, err := c.agentSession(ctx, "exec "+QuoteArgs([]string{bin, "agent"}), bin, nil)
	return err
}

// agentSession starts command in a new session and makes it the agent
// (see UseAgent). With upload, command first reads upload's bytes from its
// stdin, puts them in place and prints "nbship-uploaded" before it execs
// the agent: the session's stdin goes on as the agent's lifeline. If that
// part fails, the session's end is returned as uploadErr.
func (c *Client) agentSession(ctx context.Context, command, bin string, upload io.Reader) (uploadErr, err error) {
	c.mu.Lock()
	has := c.agent != nil
	c.mu.Unlock()
	if has && upload == nil {
		return nil, nil
	}
	fallback := func(why string, err error) error {
		if cerr := c.connErr(); cerr != nil {
			return cerr
		}
		if ctx.Err() != nil {
			return fmt.Errorf("ssh: %s: starting the nbship agent: %w", c.name, ctx.Err())
		}
		if err != nil {
			why += ": " + err.Error()
		}
		fmt.Fprintf(c.log, "ssh: %s: %s; running each step in a session of its own (the login shell starts for each)\n", c.name, why)
		return nil
	}

	sess, err := c.newSession(ctx)
	if err != nil {
		if upload != nil {
			return err, nil
		}
		return nil, fallback("no session for the nbship agent", err)
	}
	a := &agentLink{sess: sess, tail: &tail.Buffer{}, done: make(chan struct{})}
	sess.Stderr = a.tail
	stdout, err := sess.StdoutPipe()
	if err == nil {
		a.stdin, err = sess.StdinPipe()
	}
	if err == nil {
		err = sess.Start(command)
	}
	if err != nil {
		sess.Close()
		if upload != nil {
			return fmt.Errorf("ssh: %s: %w", c.name, err), nil
		}
		return nil, fallback("could not start the nbship agent", err)
	}
	var waitErr error
	go func() {
		waitErr = sess.Wait()
		close(a.done)
	}()
	if upload != nil {
		go io.Copy(a.stdin, upload) // then stdin stays open: the lifeline
	}
	stopAgent := func() {
		a.stdin.Close()
		sess.Close()
	}

	// The socket line; whatever the login shell printed before it is
	// skipped.
	found := make(chan string, 1)
	uploaded := make(chan struct{})
	go func() {
		br := bufio.NewReader(io.LimitReader(stdout, agentMaxLines))
		for {
			line, err := br.ReadString('\n')
			line = strings.TrimRight(line, "\n")
			if line == "nbship-uploaded" && err == nil && upload != nil {
				close(uploaded)
				continue
			}
			if p, ok := strings.CutPrefix(line, agentLinePfx); ok && err == nil {
				found <- p
				io.Copy(io.Discard, stdout)
				return
			}
			if err != nil {
				close(found)
				io.Copy(io.Discard, stdout)
				return
			}
		}
	}()
	timer := time.NewTimer(agentStartWait)
	defer timer.Stop()
	select {
	case p, ok := <-found:
		if !ok {
			<-a.done
			stopAgent()
			if upload != nil {
				select {
				case <-uploaded:
				default:
					return c.sessionError(command, waitErr, a.tail.String()), nil
				}
			}
			return nil, fallback(fmt.Sprintf("%s agent did not start", Quote(bin)), errorLine(a.tail.String()))
		}
		a.sock = p
	case <-timer.C:
		stopAgent()
		if upload != nil {
			return fmt.Errorf("ssh: %s: no answer within %v", c.name, agentStartWait), nil
		}
		return nil, fallback(fmt.Sprintf("%s agent did not say where it listens within %v", Quote(bin), agentStartWait), nil)
	case <-ctx.Done():
		stopAgent()
		if upload != nil {
			return fmt.Errorf("ssh: %s: %w", c.name, ctx.Err()), nil
		}
		return nil, fallback("", nil)
	}

	// One connection proves that sshd forwards to the socket; it is kept
	// for the first command.
	conn, err := c.ssh.DialContext(ctx, "unix", a.sock)
	if err != nil {
		stopAgent()
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			// OpenSSH says "open failed" whatever the reason.
			return nil, fallback("the host's sshd refuses connections to unix sockets (AllowStreamLocalForwarding no or DisableForwarding yes in its sshd_config?)", err)
		}
		return nil, fallback("could not reach the nbship agent's socket", err)
	}
	ready := make(chan struct{})
	close(ready)
	a.spare = &spareConn{ready: ready, conn: conn, opened: time.Now()}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.agent != nil {
		conn.Close()
		stopAgent()
		return nil, nil
	}
	c.agent = a
	go c.beat(a)
	return nil, nil
}

// beat keeps the agent's lifeline alive (see agentBeat).
func (c *Client) beat(a *agentLink) {
	t := time.NewTicker(agentBeat)
	defer t.Stop()
	for {
		select {
		case <-a.done:
			return
		case <-c.done:
			return
		case <-t.C:
			if _, err := a.stdin.Write([]byte{'\n'}); err != nil {
				return
			}
		}
	}
}

// sessionError is why a session that ran command ended badly.
func (c *Client) sessionError(command string, err error, stderr string) error {
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		return &ExitError{Host: c.name, Command: command, Status: ee.ExitStatus(), Signal: ee.Signal(), Stderr: stderr}
	}
	if cerr := c.connErr(); cerr != nil {
		return cerr
	}
	if err == nil {
		err = errors.New("ended without a word")
	}
	return fmt.Errorf("ssh: %s: %s: %w", c.name, shortCommand(command), err)
}

func errorLine(s string) error {
	if l := tail.Reason(s); l != "" {
		return errors.New(l)
	}
	return nil
}

// agentLink returns the agent commands go through, or nil.
func (c *Client) agentLink() *agentLink {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agent
}

// UsesAgent reports whether commands run through the host's nbship agent.
func (c *Client) UsesAgent() bool { return c.agentLink() != nil }

// startAgent is Start through the agent: one channel per command, no shell.
func (c *Client) startAgent(ctx context.Context, cmd Cmd, a *agentLink) (*Process, error) {
	command := QuoteArgs(cmd.Args)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	conn, err := c.agentConn(ctx, a)
	if err != nil {
		if cerr := c.connErr(); cerr != nil {
			return nil, cerr
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh: %s: %w", c.name, ctx.Err())
		}
		select {
		case <-a.done:
			msg := fmt.Sprintf("ssh: %s: the nbship agent on the host ended", c.name)
			if l := tail.Reason(a.tail.String()); l != "" {
				msg += ": " + l
			}
			return nil, fmt.Errorf("%s (starting %s): %w", msg, shortCommand(command), err)
		default:
		}
		return nil, fmt.Errorf("ssh: %s: starting %s through the nbship agent: %w", c.name, shortCommand(command), err)
	}
	req, err := json.Marshal(agentRequest{V: agentVersion, Argv: cmd.Args, Env: cmd.Env, Stdin: cmd.Stdin != nil || cmd.Pipes})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	fw := &frameWriter{w: conn}
	p := c.newProcess(command, cmd)
	p.conn, p.fw = conn, fw
	p.stdin = &agentStdin{fw: fw}
	if cmd.Pipes {
		p.Stdin = p.stdin
	}
	var out io.Writer
	if cmd.Pipes && cmd.Stdout == nil {
		pr, pw := io.Pipe()
		p.Stdout, p.outPipe, out = pr, pw, pw
	} else {
		p.stdout = &drainWriter{w: cmd.Stdout}
		out = p.stdout
	}
	start := func() error {
		_, err := conn.Write(append(req, '\n'))
		return err
	}
	if err := c.launch(ctx, p, conn, cmd, command, start); err != nil {
		return nil, err
	}
	go p.readAgent(out, io.MultiWriter(p.tail, p.stderr))
	return p, nil
}

// readAgent reads the command's output frames and its exit status.
func (p *Process) readAgent(stdout, stderr io.Writer) {
	br := bufio.NewReaderSize(p.conn, 64<<10)
	buf := make([]byte, 32<<10)
	status, rerr := -1, error(nil)
	for status < 0 {
		typ, b, err := readFrame(br, buf)
		if err != nil {
			rerr = err
			break
		}
		buf = b[:cap(b)]
		switch typ {
		case frameStdout:
			stdout.Write(b)
		case frameStderr:
			stderr.Write(b)
		case frameExit:
			if len(b) != 4 {
				rerr = fmt.Errorf("agent: exit frame of %d bytes", len(b))
				break
			}
			status = int(int32(binary.BigEndian.Uint32(b)))
		}
		if rerr != nil {
			break
		}
	}
	p.stopCtx()
	p.c.untrack(p)
	p.conn.Close()
	if p.outPipe != nil {
		if rerr != nil {
			p.outPipe.CloseWithError(rerr)
		} else {
			p.outPipe.Close()
		}
	}
	p.mu.Lock()
	stopped := p.stopped
	p.mu.Unlock()
	p.finish(p.agentResult(status, rerr, stopped))
}

func (p *Process) agentResult(status int, err, stopped error) error {
	switch {
	case stopped != nil && (err != nil || status != 0):
		return p.errorf("stopped: %w", stopped)
	case err != nil:
		if lost := p.lost(); lost != nil {
			return lost
		}
		return p.errorf("the connection to the nbship agent ended: %w", err)
	case status != 0:
		return &ExitError{Host: p.c.name, Command: p.command, Status: status, Stderr: p.tail.String()}
	}
	return p.drained()
}

// agentStdin sends the command's stdin as frames; Close sends its EOF.
type agentStdin struct {
	fw     *frameWriter
	mu     sync.Mutex
	closed bool
}

func (s *agentStdin) Write(b []byte) (int, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, io.ErrClosedPipe
	}
	return streamWriter{s.fw, frameStdin}.Write(b)
}

func (s *agentStdin) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.fw.frame(frameStdinEOF, nil)
}
