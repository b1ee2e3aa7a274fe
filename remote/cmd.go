package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/internal/tail"
)

// Cmd is a command to run on a host. Args is the argv, quoted element by
// element, so no argument is ever interpreted by the remote shell; Env
// adds NAME=value prefixes built with the same quoting. Commands are
// parsed by the remote user's login shell, which must be a POSIX shell
// (sh, bash, dash, zsh, ksh).
//
// A command never outlives its controller. sshd makes each session's
// login shell the leader of a new process group, but it neither kills that
// group when the channel or the whole connection goes away, nor accepts
// "signal" requests for root logins. So, depending on stdin:
//
//   - Stdin nil and not Pipes (the usual case): the command runs under a
//     small sh wrapper, in the background with stdin from /dev/null. The
//     wrapper keeps the session's stdin on another fd, where a watcher
//     waits for EOF; the client never writes to it. EOF comes when the
//     client stops the command, closes the Client or vanishes (sshd
//     closes a session's pipes when its channel or connection ends,
//     including a TCP connection dropped without an SSH goodbye). The
//     watcher then sends TERM to the process group, and KILL to whatever
//     is left 5 seconds later. Children of the command go too, unless
//     they made process groups of their own.
//   - Stdin set, or Pipes: stdin carries the caller's data, so it cannot
//     be watched. The command line first prints the shell's pid on stderr
//     (the Process takes that line out). Stopping the command then sends
//     TERM to the group from a kill command in a new session on the same
//     connection (KILL follows 5 seconds later), sends a TERM "signal"
//     request (for non-root logins), closes stdin and closes the session.
//     If the connection itself is gone, only the EOF on stdin is left: such
//     a command must end by itself when its stdin ends (nbship's own
//     remote ends do).
type Cmd struct {
	Args   []string
	Env    map[string]string
	Stdin  io.Reader // nil: the remote stdin is kept open and watched (see above)
	Stdout io.Writer // nil: discarded
	Stderr io.Writer // nil: discarded (but the last ~4 KiB kept for ExitError.Stderr)

	// Pipes (Start only) makes Process.Stdin a pipe to the command's
	// stdin and, when Stdout is nil, Process.Stdout a pipe from its
	// stdout. Stdin must be nil. The caller owns the data: read
	// Process.Stdout until EOF (the command blocks when it is not read)
	// and close Process.Stdin to let the command finish.
	Pipes bool
}

// ExitError is returned when a remote command ran and failed, and by the
// controller for an end it ran on this machine (Host "local").
type ExitError struct {
	Host    string // Client.Name(), or "local"
	Command string // the quoted command line, for messages
	Status  int    // exit status; 128+n when killed by signal n
	Signal  string // signal name without SIG (e.g. "TERM") when sshd reports one: not under the wrapper (see Cmd), which exits 128+n
	Stderr  string // the last ~4 KiB of the command's stderr
}

func (e *ExitError) Error() string {
	where := "ssh: " + e.Host
	if e.Host == "local" {
		where = "local"
	}
	var msg string
	if e.Signal != "" {
		msg = fmt.Sprintf("%s: %s was killed by signal %s", where, shortCommand(e.Command), e.Signal)
	} else {
		msg = fmt.Sprintf("%s: %s exited with status %d", where, shortCommand(e.Command), e.Status)
	}
	if l := tail.Reason(e.Stderr); l != "" {
		msg += ": " + l
	}
	return msg
}

// shortCommand quotes a command line for a one-line message.
func shortCommand(s string) string {
	const max = 80
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "") + " ..."
	}
	return strconv.Quote(s)
}

// Process is a command started with Client.Start.
type Process struct {
	Stdin  io.WriteCloser // with Cmd.Pipes: the command's stdin
	Stdout io.Reader      // with Cmd.Pipes and a nil Cmd.Stdout: the command's stdout

	c       *Client
	session *ssh.Session   // nil through the agent
	conn    net.Conn       // the channel to the agent, or nil
	fw      *frameWriter   // frames to the agent
	outPipe *io.PipeWriter // through the agent, with Pipes: feeds Stdout
	command string         // QuoteArgs(Args), for messages
	stdin   io.WriteCloser // the session's stdin, whoever writes it
	stdout  *drainWriter
	stderr  *drainWriter
	tail    *tail.Buffer
	stopCtx func() bool
	watched bool       // runs under watchScript
	pid     *pidFilter // not watched: learns the login shell's pid from stderr

	done chan struct{}
	err  error

	mu       sync.Mutex
	stopped  error // why we stopped it
	finished bool
}

// Run runs cmd and waits for it. A non-zero exit is an *ExitError;
// cancelling ctx stops the command (see Cmd) and returns ctx's error.
func (c *Client) Run(ctx context.Context, cmd Cmd) error {
	if cmd.Pipes {
		return fmt.Errorf("ssh: %s: Run: Cmd.Pipes needs Start", c.name)
	}
	p, err := c.Start(ctx, cmd)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Output runs args and returns its stdout. On failure the error (an
// *ExitError) carries the command's stderr and names its last line.
func (c *Client) Output(ctx context.Context, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := c.Run(ctx, Cmd{Args: args, Stdout: &out})
	return out.Bytes(), err
}

// Start starts cmd. The command lives until it exits, ctx is done,
// Process.Close or Client.Close; Wait must be called (or Close) to release
// its session.
func (c *Client) Start(ctx context.Context, cmd Cmd) (*Process, error) {
	line, err := commandLine(cmd.Args, cmd.Env)
	if err != nil {
		return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	if cmd.Pipes && cmd.Stdin != nil {
		return nil, fmt.Errorf("ssh: %s: Cmd.Pipes and Cmd.Stdin both set", c.name)
	}
	if a := c.agentLink(); a != nil {
		return c.startAgent(ctx, cmd, a)
	}
	command := QuoteArgs(cmd.Args)
	sess, err := c.newSession(ctx)
	if err != nil {
		return nil, err
	}
	p := c.newProcess(command, cmd)
	p.session = sess
	if cmd.Pipes && cmd.Stdout == nil {
		if p.Stdout, err = sess.StdoutPipe(); err != nil {
			sess.Close()
			return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
		}
	} else {
		p.stdout = &drainWriter{w: cmd.Stdout}
		sess.Stdout = p.stdout
	}
	stderr := io.MultiWriter(p.tail, p.stderr) // neither ever fails
	if p.stdin, err = sess.StdinPipe(); err != nil {
		sess.Close()
		return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
	}

	var script string
	p.watched = !cmd.Pipes && cmd.Stdin == nil
	if p.watched {
		script = watchScript(line)
	} else {
		p.pid = newPIDFilter(stderr)
		stderr = p.pid
		script = p.pid.script(line)
	}
	sess.Stderr = stderr
	if cmd.Pipes {
		p.Stdin = p.stdin
	}
	if err := c.launch(ctx, p, sess, cmd, command, func() error { return sess.Start(script) }); err != nil {
		return nil, err
	}
	go p.wait()
	return p, nil
}

// launch starts p (through start) over ch, a session or an agent
// connection: tracked before it starts, so that a concurrent Client.Close
// either refuses it here or stops it; ch is closed if it does not start.
// Then cmd's stdin is copied in, and ctx's end stops it.
func (c *Client) launch(ctx context.Context, p *Process, ch io.Closer, cmd Cmd, command string, start func() error) error {
	if !c.track(p) {
		ch.Close()
		return c.connErr()
	}
	if err := start(); err != nil {
		c.untrack(p)
		ch.Close()
		if cerr := c.connErr(); cerr != nil {
			return cerr
		}
		return fmt.Errorf("ssh: %s: starting %s: %w", c.name, shortCommand(command), err)
	}
	if cmd.Stdin != nil {
		go p.copyStdin(cmd.Stdin)
	}
	p.stopCtx = context.AfterFunc(ctx, func() { p.stop(ctx.Err()) })
	return nil
}

// newSession opens a session, giving up when ctx is done. The keepalive
// bounds how long a stuck connection can block it.
func (c *Client) newSession(ctx context.Context) (*ssh.Session, error) {
	if err := c.connErr(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.ssh.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		if r.err == nil {
			return r.s, nil
		}
		if err := c.connErr(); err != nil {
			return nil, err
		}
		var oce *ssh.OpenChannelError
		if errors.As(r.err, &oce) && (oce.Reason == ssh.ConnectionFailed || oce.Reason == ssh.Prohibited) {
			// OpenSSH says "open failed" when MaxSessions is reached.
			return nil, fmt.Errorf("ssh: %s: the host refused another session on this connection (sshd's MaxSessions, 10 by default): %w", c.name, r.err)
		}
		return nil, fmt.Errorf("ssh: %s: opening a session: %w", c.name, r.err)
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, fmt.Errorf("ssh: %s: %w", c.name, ctx.Err())
	}
}

// copyStdin feeds Cmd.Stdin to the command and then EOF. It ends when the
// reader does: a write to a finished session fails at once. A read error
// stops the command rather than let it take a short input for a whole one.
func (p *Process) copyStdin(r io.Reader) {
	buf := make([]byte, 32*1024)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if _, werr := p.stdin.Write(buf[:n]); werr != nil {
				break // the session is over; Wait reports why
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			p.stop(fmt.Errorf("reading stdin: %w", rerr))
			break
		}
	}
	p.stdin.Close()
}

// watchScript wraps a command line so that the command is killed when the
// session's stdin reaches EOF (see Cmd). $$ is the login shell, which sshd
// made leader of a new session and so of a process group; the watcher
// ignores TERM so that it survives its own group signal and sshd's.
func watchScript(line string) string {
	return `exec 3<&0 </dev/null
` + line + ` 3<&- &
nbship_pid=$!
(trap '' TERM
while IFS= read -r nbship_line; do :; done
kill -s TERM -- -$$ 2>/dev/null || kill -s TERM "$nbship_pid"
nbship_i=0
while [ "$nbship_i" -lt 5 ] && kill -0 "$nbship_pid" 2>/dev/null; do sleep 1; nbship_i=$((nbship_i+1)); done
kill -s KILL -- -$$ 2>/dev/null || kill -s KILL "$nbship_pid") <&3 >/dev/null 2>&1 &
nbship_watch=$!
exec 3<&-
wait "$nbship_pid"
nbship_status=$?
exec 2>/dev/null
kill -s KILL "$nbship_watch"
exit "$nbship_status"`
}

// stop stops the command and does not wait for it. A watched command
// gets EOF on its stdin, which the wrapper acts on. Any other gets TERM
// three ways, as each can fail: from a kill command in a new session on
// the same connection (KILL follows 5 seconds later), from sshd through a
// "signal" request (sshd refuses it for root logins), and EOF on its
// stdin. Then the session is closed.
func (p *Process) stop(reason error) {
	p.mu.Lock()
	if p.finished || p.stopped != nil {
		p.mu.Unlock()
		return
	}
	p.stopped = reason
	p.mu.Unlock()
	if p.conn != nil {
		// The agent kills the command's group when asked, and when the
		// channel ends, whichever comes first; the exit frame confirms.
		go func() {
			if p.fw.frame(frameKill, nil) != nil {
				p.conn.Close()
			}
		}()
		time.AfterFunc(stopWait, func() {
			p.conn.Close()
			p.finish(p.errorf("stopped, but the host did not confirm its end: %w", reason))
		})
		return
	}
	if !p.watched {
		p.killGroup()
		p.session.Signal(ssh.SIGTERM)
	}
	p.stdin.Close()
	p.session.Close()
	// The host confirms the end once the command is gone. If it never
	// does (a command that ignores TERM and EOF), do not wait forever.
	time.AfterFunc(stopWait, func() {
		p.finish(p.errorf("stopped, but the host did not confirm its end: %w", reason))
	})
}

// stopWait is how long Wait waits for a stopped command's session to end.
// It is longer than the wrapper's TERM-to-KILL grace period.
const stopWait = 15 * time.Second

// killGroup signals the command's process group from a new session.
func (p *Process) killGroup() {
	pid, ok := p.pid.wait(time.Second)
	if !ok {
		return
	}
	s, err := p.c.ssh.NewSession()
	if err != nil {
		return
	}
	defer s.Close()
	s.Run(fmt.Sprintf("kill -s TERM -- -%[1]d 2>/dev/null; (sleep 5; kill -s KILL -- -%[1]d 2>/dev/null) </dev/null >/dev/null 2>&1 &", pid))
}

func (p *Process) wait() {
	err := p.session.Wait()
	p.stopCtx()
	p.c.untrack(p)
	p.session.Close()
	if p.pid != nil {
		p.pid.flush()
	}
	p.mu.Lock()
	stopped := p.stopped
	p.mu.Unlock()
	p.finish(p.result(err, stopped))
}

// newProcess is the part of a Process that is the same over a session
// and over the agent.
func (c *Client) newProcess(command string, cmd Cmd) *Process {
	return &Process{
		c:       c,
		command: command,
		stderr:  &drainWriter{w: cmd.Stderr},
		tail:    &tail.Buffer{},
		done:    make(chan struct{}),
	}
}

// finish records the result of the command; the first one counts.
func (p *Process) finish(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return
	}
	p.finished = true
	p.err = err
	close(p.done)
}

// result turns the session's end into the error Wait returns.
func (p *Process) result(err, stopped error) error {
	var ee *ssh.ExitError
	switch {
	case stopped != nil && err != nil:
		return p.errorf("stopped: %w", stopped)
	case errors.As(err, &ee):
		return &ExitError{
			Host:    p.c.name,
			Command: p.command,
			Status:  ee.ExitStatus(),
			Signal:  ee.Signal(),
			Stderr:  p.tail.String(),
		}
	case err != nil:
		if lost := p.lost(); lost != nil {
			return lost
		}
		return p.errorf("%w", err)
	}
	return p.drained()
}

// errorf is an error about the command: "ssh: HOST: COMMAND: " and the
// message.
func (p *Process) errorf(format string, args ...any) error {
	return fmt.Errorf("ssh: %s: %s: "+format, append([]any{p.c.name, shortCommand(p.command)}, args...)...)
}

// lost is the connection's error when the command ended without an exit
// status because the connection went away, or nil. Such an end mostly
// comes first, so the Client is given a moment to notice.
func (p *Process) lost() error {
	select {
	case <-p.c.done:
	case <-time.After(time.Second):
	}
	if cerr := p.c.connErr(); cerr != nil {
		return fmt.Errorf("%w (while running %s)", cerr, shortCommand(p.command))
	}
	return nil
}

// drained is the error of writing the command's stdout or stderr to the
// caller's writers, or nil.
func (p *Process) drained() error {
	for _, w := range []struct {
		name string
		d    *drainWriter
	}{{"stdout", p.stdout}, {"stderr", p.stderr}} {
		if w.d != nil && w.d.err != nil {
			return p.errorf("writing its %s: %w", w.name, w.d.err)
		}
	}
	return nil
}

// Wait waits for the command to end and returns its result: nil, an
// *ExitError, or why it could not finish (connection lost, stopped).
// It may be called more than once.
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Close stops the command if it is still running (see Cmd) and closes
// its session. It waits until the host confirms the session's end, or
// 15 seconds at most.
func (p *Process) Close() error {
	p.stop(errProcessClosed)
	<-p.done
	return nil
}

var errProcessClosed = errors.New("process closed")

// drainWriter passes writes to w until w fails, then swallows them, so the
// session's output is always drained; the first error is kept.
type drainWriter struct {
	w   io.Writer
	err error
}

func (d *drainWriter) Write(b []byte) (int, error) {
	if d.w != nil && d.err == nil {
		if _, err := d.w.Write(b); err != nil {
			d.err = err
		}
	}
	return len(b), nil
}
