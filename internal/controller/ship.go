package controller

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/tail"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/remote"
	"github.com/nbship/nbship/transfer"
)

// Paths a channel can take.
const (
	PathAuto   = "auto"
	PathDirect = "direct"
	PathSSH    = "ssh"
)

// End is one end of the channel: a host and the nbship to run there.
type End struct {
	Host   *remote.Client // the host, over SSH (when Runner is nil)
	Runner Runner         // starts the end's commands; nil: SSH(Host)
	Bin    string         // nbship's path on the host
}

func (e End) runner() Runner {
	if e.Runner != nil {
		return e.Runner
	}
	return SSH(e.Host)
}

// Runner starts commands where an end runs: on a host over SSH (SSH) or on
// this machine (Local).
type Runner interface {
	Name() string
	// Start starts argv with env added to its environment, stdin and
	// stdout piped, stderr to stderr. The command ends when ctx is done.
	Start(ctx context.Context, argv []string, env map[string]string, stderr io.Writer) (*Process, error)
}

// Process is a command a Runner started. Read Stdout to EOF and close
// Stdin to let it finish; Wait may be called more than once; Close stops it.
type Process struct {
	Stdin  io.WriteCloser
	Stdout io.Reader
	Proc
}

// Proc waits for or stops a started command.
type Proc interface {
	Wait() error
	Close() error
}

// SSH is a Runner for a host reached over SSH.
func SSH(c *remote.Client) Runner { return sshRunner{c} }

type sshRunner struct{ c *remote.Client }

func (r sshRunner) Name() string { return r.c.Name() }

func (r sshRunner) Start(ctx context.Context, argv []string, env map[string]string, stderr io.Writer) (*Process, error) {
	p, err := r.c.Start(ctx, remote.Cmd{Args: argv, Env: env, Pipes: true, Stderr: stderr})
	if err != nil {
		return nil, err
	}
	return &Process{Stdin: p.Stdin, Stdout: p.Stdout, Proc: p}, nil
}

// Local is a Runner for this machine: HOST "local" on the command line.
type Local struct{}

func (Local) Name() string { return "local" }

// Start runs argv as a child process. Like an end over SSH it has its own
// stdin and stdout pipes, and stops when its stdin closes.
func (Local) Start(ctx context.Context, argv []string, env map[string]string, stderr io.Writer) (*Process, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	t := &tail.Buffer{}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	cmd.Stderr = t
	if stderr != nil {
		cmd.Stderr = io.MultiWriter(stderr, t)
	}
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("ship: local: %w", err)
	}
	lp := &localProc{cmd: cmd, stdin: inW, tail: t, done: make(chan struct{})}
	go lp.wait()
	lp.stopCtx = context.AfterFunc(ctx, func() { lp.Close() })
	return &Process{Stdin: inW, Stdout: outR, Proc: lp}, nil
}

type localProc struct {
	cmd     *exec.Cmd
	stdin   io.Closer
	tail    *tail.Buffer
	stopCtx func() bool
	done    chan struct{}
	err     error
}

func (p *localProc) wait() {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		err = &remote.ExitError{Host: "local", Command: remote.QuoteArgs(p.cmd.Args), Status: ee.ExitCode(), Stderr: p.tail.String()}
	}
	p.err = err
	close(p.done)
}

func (p *localProc) Wait() error {
	<-p.done
	p.stopCtx()
	return p.err
}

// Close stops the command as the controller going away would: its stdin
// closes (an end with --stdin-lifeline stops), then TERM, then KILL.
func (p *localProc) Close() error {
	p.stdin.Close()
	select {
	case <-p.done:
		return nil
	case <-time.After(time.Second):
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	p.cmd.Process.Kill()
	<-p.done
	return nil
}

// CheckNixStore makes sure nix-store runs where e runs, so that a receiver
// (or sender) of store paths without Nix fails before any data moves.
func CheckNixStore(ctx context.Context, e End) error {
	r := e.runner()
	t := &tail.Buffer{}
	missing := fmt.Errorf("ship: %w", &nixstore.NotFoundError{Host: r.Name()})
	p, err := r.Start(ctx, []string{"nix-store", "--version"}, nil, t)
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return missing
		}
		return err
	}
	p.Stdin.Close()
	io.Copy(io.Discard, p.Stdout)
	err = p.Wait()
	status, stderr, ok := protocol.Status(err)
	switch {
	case err == nil:
		return nil
	case ok && nixstore.NotFound(status, stderr):
		return missing
	}
	return fmt.Errorf("ship: %s: nix-store --version: %w", r.Name(), err)
}

// Ship describes one transfer from From to To: Send and Recv are the
// ends' command lines, of which Run sets how they meet (Connect or Stdio,
// Listen or Stdio) for the path it takes.
type Ship struct {
	From, To End
	Send     protocol.Send // Connect: what the sender dials, opensslServer:opensslPort
	Recv     protocol.Recv // Listen: the receiver's listen address, e.g. ":61616"
	Path     string        // auto, direct or ssh
	Log      io.Writer     // the controller's stderr
}

// Result is a finished transfer as the two ends reported it.
type Result struct {
	Path      string          // "direct" or "ssh"
	Send      json.RawMessage // the sender's --json summary
	Recv      json.RawMessage // the receiver's --json summary
	WireBytes int64           // bytes the controller carried (ssh path)
}

// Run ships, direct first when Path allows, over SSH when it must.
func (s *Ship) Run(ctx context.Context) (*Result, error) {
	switch s.Path {
	case "", PathAuto, PathDirect:
		r, err := s.direct(ctx)
		var df *dialFailed
		if err == nil || !errors.As(err, &df) || s.Path == PathDirect {
			if df != nil {
				return nil, fmt.Errorf("ship: the build host could not reach the receiver at %s: %v; open that port from the build host to the PXE host, or use --path auto or ssh", s.Send.Connect, df.reason)
			}
			return r, err
		}
		fmt.Fprintf(s.Log, "nbship: direct path to %s failed (%s); carrying the channel over SSH through this machine instead\n", s.Send.Connect, df.reason)
		return s.overSSH(ctx)
	case PathSSH:
		return s.overSSH(ctx)
	}
	return nil, fmt.Errorf("ship: --path %q is not auto, direct or ssh", s.Path)
}

type dialFailed struct{ reason string }

func (d *dialFailed) Error() string { return "dial failed: " + d.reason }

// end is a started end with a line reader on its stdout.
type end struct {
	p      *Process
	out    *bufio.Reader
	stderr *captureWriter
	name   string
}

func (s *Ship) start(ctx context.Context, e End, args []string) (*end, error) {
	r := e.runner()
	c := &captureWriter{w: Prefixed(s.Log, r.Name())}
	// Test builds pass their hooks on to the ends; release builds pass nothing.
	p, err := r.Start(ctx, append([]string{e.Bin}, args...), transfer.TestHookEnv(), c)
	if err != nil {
		return nil, err
	}
	return &end{p: p, out: bufio.NewReader(p.Stdout), stderr: c, name: r.Name()}, nil
}

// giveStdin writes the sender's store paths, then an empty line that ends
// them, as soon as it has started: they go ahead of the receiver's pin, so
// that the sender asks its store for their closure while the receiver
// starts (for 1,000 paths a quarter of a second).
func (s *Ship) giveStdin(sender *end) error {
	lines := s.Send.StdinPaths()
	if lines == nil {
		return nil
	}
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	if _, err := io.WriteString(sender.p.Stdin, b.String()); err != nil {
		// It stopped reading: its own exit says why.
		if werr := sender.p.Wait(); werr != nil {
			return werr
		}
		return fmt.Errorf("ship: %s: giving the sender its store paths: %w", sender.name, err)
	}
	return nil
}

// line reads one line of the end's stdout; at EOF it returns the end's
// exit error (which says why it stopped).
func (e *end) line(want string) (string, error) {
	l, err := e.out.ReadString('\n')
	if err == nil {
		return strings.TrimSuffix(l, "\n"), nil
	}
	if werr := e.p.Wait(); werr != nil {
		return "", werr
	}
	return "", fmt.Errorf("ship: %s: nbship ended before printing its %s", e.name, want)
}

func (e *end) fingerprint() (string, error) {
	l, err := e.line("fingerprint")
	if err != nil {
		return "", err
	}
	if !protocol.IsFingerprint(l) {
		return "", fmt.Errorf("ship: %s: expected a fingerprint line, got %q", e.name, l)
	}
	return l, nil
}

// startRecv starts the receiver with its command line r.
func (s *Ship) startRecv(ctx context.Context, r protocol.Recv) (*end, error) {
	args, err := r.Args()
	if err != nil {
		return nil, err
	}
	return s.start(ctx, s.To, args)
}

// startSender starts the sender with its command line r and gives it its
// store paths (giveStdin).
func (s *Ship) startSender(ctx context.Context, r protocol.Send) (*end, error) {
	args, err := r.Args()
	if err != nil {
		return nil, err
	}
	sender, err := s.start(ctx, s.From, args)
	if err != nil {
		return nil, err
	}
	if err := s.giveStdin(sender); err != nil {
		sender.p.Close()
		return nil, err
	}
	return sender, nil
}

func (s *Ship) direct(ctx context.Context) (*Result, error) {
	sendCmd, recvCmd := s.Send, s.Recv
	sendCmd.Stdio, recvCmd.Stdio = false, false
	if sendCmd.DialTimeout <= 0 {
		sendCmd.DialTimeout = 5 * time.Second
	}
	recvCmd.AcceptTimeout = sendCmd.DialTimeout + 30*time.Second
	// When the port is known, both ends start at once: the sender waits for
	// the receiver's pin before it dials, so it cannot be early. Port 0 is
	// known only once the receiver has picked one.
	host, port, _ := net.SplitHostPort(s.Send.Connect)
	var sender, recv *end
	var sendErr error
	recvUp := false
	defer func() { // the sender first, then the receiver
		if sender != nil {
			if !recvUp {
				// Stopped because the receiver failed: its reason is the
				// one to read, not the sender's complaint at being stopped.
				sender.stderr.silence()
			}
			sender.p.Close()
		}
		if recv != nil {
			recv.p.Close()
		}
	}()
	if port != "0" {
		sender, sendErr = s.startSender(ctx, sendCmd)
	}
	recv, err := s.startRecv(ctx, recvCmd)
	if err != nil {
		return nil, err
	}
	rfp, err := recv.fingerprint()
	if err != nil {
		return nil, err
	}
	l, err := recv.line("listening address")
	if err != nil {
		return nil, err
	}
	recvUp = true
	if sendErr != nil {
		return nil, sendErr
	}
	if sender == nil {
		// Port 0: the receiver picked one; dial that.
		connect := s.Send.Connect
		addr, _ := protocol.ParseListening(l)
		if _, p, err := net.SplitHostPort(addr); err == nil {
			connect = net.JoinHostPort(host, p)
		}
		sendCmd.Connect = connect
		if sender, err = s.startSender(ctx, sendCmd); err != nil {
			return nil, err
		}
	}
	sfp, err := sender.fingerprint()
	if err != nil {
		return nil, err
	}
	// Each end learns the other's pin over its own SSH session's stdin.
	if _, err := io.WriteString(recv.p.Stdin, sfp+"\n"); err != nil {
		return nil, fmt.Errorf("ship: %s: giving the receiver the sender's pin: %w", recv.name, err)
	}
	if _, err := io.WriteString(sender.p.Stdin, rfp+"\n"); err != nil {
		return nil, fmt.Errorf("ship: %s: giving the sender the receiver's pin: %w", sender.name, err)
	}
	if l, err := sender.line("connection"); err != nil {
		if status, stderr, ok := protocol.Status(err); ok && status == protocol.ExitDialFailed {
			return nil, &dialFailed{reason: tail.LastLine(stderr)}
		}
		return nil, err
	} else if !protocol.IsConnected(l) {
		return nil, fmt.Errorf("ship: %s: expected a connected line, got %q", sender.name, l)
	}
	return finish(sender, recv, PathDirect, 0, sender.summaryFromStdout, recv.summaryFromStdout)
}

func (e *end) summaryFromStdout() (json.RawMessage, error) {
	l, err := e.line("summary")
	if err != nil {
		return nil, err
	}
	return json.RawMessage(l), nil
}

func (e *end) summaryFromStderr() (json.RawMessage, error) {
	if err := e.p.Wait(); err != nil {
		return nil, err
	}
	if j := e.stderr.json(); j != nil {
		return j, nil
	}
	return nil, fmt.Errorf("ship: %s: nbship printed no summary", e.name)
}

// finish waits for both ends and collects their summaries. The sender's
// result decides: it exits 0 only after the receiver acknowledged.
func finish(sender, recv *end, path string, wire int64, sendSum, recvSum func() (json.RawMessage, error)) (*Result, error) {
	var (
		wg          sync.WaitGroup
		rsum        json.RawMessage
		rerr        error
		ssum        json.RawMessage
		serr, swerr error
	)
	senderDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		rsum, rerr = recvSum()
		if rerr == nil {
			rerr = recv.p.Wait()
		}
		if rerr != nil {
			// The receiver is gone (failed, or its host or link died). A
			// sender that does not hear of it in a few seconds is stopped:
			// under the SSH path nothing else reads what it writes.
			select {
			case <-senderDone:
			case <-time.After(10 * time.Second):
				sender.p.Close()
			}
		}
	}()
	ssum, serr = sendSum()
	swerr = sender.p.Wait()
	close(senderDone)
	if serr == nil {
		serr = swerr
	}
	// Once the sender has its answer the receiver has nothing more to say:
	// closing its stdin ends it if it is still waiting.
	recv.p.Stdin.Close()
	sender.p.Stdin.Close()
	wg.Wait()
	// A refusal is the receiver's word, whichever end reports it: the
	// receiver exits ExitRefused, and so does the sender it told.
	for _, e := range []struct {
		err error
		end *end
	}{{rerr, recv}, {serr, sender}} {
		if re := protocol.Refused(recv.name, e.err, e.end.stderr.refusal()); re != nil {
			return nil, re
		}
	}
	if serr != nil {
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			// The receiver's own reason is usually the more telling one.
			return nil, fmt.Errorf("%w (receiver: %v)", serr, rerr)
		}
		return nil, serr
	}
	if rerr != nil {
		return nil, rerr
	}
	return &Result{Path: path, Send: ssum, Recv: rsum, WireBytes: wire}, nil
}

func (s *Ship) overSSH(ctx context.Context) (*Result, error) {
	recvCmd := s.Recv
	recvCmd.Stdio, recvCmd.Listen = true, ""
	recv, err := s.startRecv(ctx, recvCmd)
	if err != nil {
		return nil, err
	}
	defer recv.p.Close()
	rfp, err := recv.fingerprint()
	if err != nil {
		return nil, err
	}
	sendCmd := s.Send
	sendCmd.Stdio, sendCmd.Connect = true, ""
	sender, err := s.startSender(ctx, sendCmd)
	if err != nil {
		return nil, err
	}
	defer sender.p.Close()
	sfp, err := sender.fingerprint()
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(recv.p.Stdin, sfp+"\n"); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(sender.p.Stdin, rfp+"\n"); err != nil {
		return nil, err
	}
	// From here on the controller carries TLS records it cannot read: the
	// pins are end to end.
	var wire atomic.Int64
	var wg sync.WaitGroup
	splice := func(dst io.WriteCloser, src io.Reader) {
		defer wg.Done()
		n, _ := io.Copy(dst, src)
		wire.Add(n)
		dst.Close()
	}
	wg.Add(2)
	go splice(recv.p.Stdin, sender.out)
	go splice(sender.p.Stdin, recv.out)
	res, err := finish(sender, recv, PathSSH, 0, sender.summaryFromStderr, recv.summaryFromStderr)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	res.WireBytes = wire.Load()
	return res, nil
}

// captureWriter passes stderr through and keeps the last JSON line (the
// --json summary of an end whose stdout is the channel) and the end's
// protocol.Refusal line, which it does not pass on.
type captureWriter struct {
	w       io.WriteCloser
	mu      sync.Mutex
	buf     []byte
	last    json.RawMessage
	refused *protocol.Refusal
	silent  bool // lines are dropped, not passed on
}

// silence drops whatever the end writes from now on.
func (c *captureWriter) silence() {
	c.mu.Lock()
	c.silent = true
	c.mu.Unlock()
}

func (c *captureWriter) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.buf = append(c.buf, b...)
	var pass []byte
	for {
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			break
		}
		l := c.buf[:i+1]
		if len(l) > 1 && l[0] == '{' && json.Valid(l[:i]) {
			c.last = append(json.RawMessage(nil), l[:i]...)
		} else if r, ok := protocol.ParseRefusal(string(l[:i])); ok {
			c.refused = &r
			if r.Peer {
				// What follows repeats the other end's refusal, which
				// that end says itself: once is enough.
				c.silent = true
			}
		} else if !c.silent {
			pass = append(pass, l...)
		}
		c.buf = c.buf[i+1:]
	}
	c.mu.Unlock()
	if len(pass) > 0 {
		c.w.Write(pass)
	}
	return len(b), nil
}

// refusal is the end's Refusal line, if it printed one.
func (c *captureWriter) refusal() *protocol.Refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refused
}

func (c *captureWriter) json() json.RawMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Run runs argv where the end runs and waits for it to end; its stdout is
// discarded, its stderr goes to stderr.
func (e End) Run(ctx context.Context, argv []string, stderr io.Writer) error {
	p, err := e.runner().Start(ctx, argv, nil, stderr)
	if err != nil {
		return err
	}
	p.Stdin.Close()
	io.Copy(io.Discard, p.Stdout)
	return p.Wait()
}
