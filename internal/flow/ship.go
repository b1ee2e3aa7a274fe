package flow

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbship/nbship/remote"
)

// ExitDialFailed is the relay's exit status when it could not reach the
// receiver at all (as opposed to reaching it and failing): the one failure
// after which the controller may carry the channel over SSH instead.
const ExitDialFailed = 75

// Paths a channel can take.
const (
	PathAuto   = "auto"
	PathDirect = "direct"
	PathSSH    = "ssh"
)

// End is one end of the channel: a host and the nbship to run there.
type End struct {
	Host *remote.Client
	Bin  string // nbship's path on the host
}

// Ship describes one transfer from From to To.
type Ship struct {
	From, To    End
	SendArgs    []string // what the relay sends: paths, or --store ...
	RecvArgs    []string // where the receiver puts it: --dest DIR --replace, --publish ...
	Listen      string   // the receiver's listen address, e.g. ":61616"
	Connect     string   // what the relay dials, opensslServer:opensslPort
	Path        string   // auto, direct or ssh
	DialTimeout time.Duration
	Level       string
	Log         io.Writer // the controller's stderr
}

// Result is a finished transfer as the two ends reported it.
type Result struct {
	Path      string          // "direct" or "ssh"
	Relay     json.RawMessage // the relay's --json summary
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
				return nil, fmt.Errorf("ship: the build host could not reach the receiver at %s: %v; open that port from the build host to the PXE host, or use --path auto or ssh", s.Connect, df.reason)
			}
			return r, err
		}
		fmt.Fprintf(s.Log, "nbship: direct path to %s failed (%s); carrying the channel over SSH through this machine instead\n", s.Connect, df.reason)
		return s.overSSH(ctx)
	case PathSSH:
		return s.overSSH(ctx)
	}
	return nil, fmt.Errorf("ship: --path %q is not auto, direct or ssh", s.Path)
}

type dialFailed struct{ reason string }

func (d *dialFailed) Error() string { return "dial failed: " + d.reason }

// end is a started remote end with a line reader on its stdout.
type end struct {
	p      *remote.Process
	out    *bufio.Reader
	stderr *captureWriter
	name   string
}

func (s *Ship) start(ctx context.Context, e End, args []string) (*end, error) {
	c := &captureWriter{w: Prefixed(s.Log, e.Host.Name())}
	p, err := e.Host.Start(ctx, remote.Cmd{
		Args:   append([]string{e.Bin}, args...),
		Pipes:  true,
		Stderr: c,
	})
	if err != nil {
		return nil, err
	}
	return &end{p: p, out: bufio.NewReader(p.Stdout), stderr: c, name: e.Host.Name()}, nil
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
	if !strings.HasPrefix(l, "fingerprint SHA256:") {
		return "", fmt.Errorf("ship: %s: expected a fingerprint line, got %q", e.name, l)
	}
	return l, nil
}

func (s *Ship) recvArgs(mode ...string) []string {
	a := append([]string{"recv"}, mode...)
	a = append(a, s.RecvArgs...)
	return append(a, "--peer-pin", "-", "--json", "--stdin-lifeline")
}

func (s *Ship) sendArgs(mode ...string) []string {
	a := append([]string{"relay"}, mode...)
	if s.Level != "" {
		a = append(a, "--level", s.Level)
	}
	a = append(a, "--peer-pin", "-", "--json", "--stdin-lifeline")
	return append(a, s.SendArgs...)
}

func (s *Ship) direct(ctx context.Context) (*Result, error) {
	dt := s.DialTimeout
	if dt <= 0 {
		dt = 5 * time.Second
	}
	recv, err := s.start(ctx, s.To, s.recvArgs("--listen", s.Listen, "--accept-timeout", (dt+30*time.Second).String()))
	if err != nil {
		return nil, err
	}
	defer recv.p.Close()
	rfp, err := recv.fingerprint()
	if err != nil {
		return nil, err
	}
	if _, err := recv.line("listening address"); err != nil {
		return nil, err
	}
	relay, err := s.start(ctx, s.From, s.sendArgs("--connect", s.Connect, "--dial-timeout", dt.String()))
	if err != nil {
		return nil, err
	}
	defer relay.p.Close()
	sfp, err := relay.fingerprint()
	if err != nil {
		return nil, err
	}
	// Each end learns the other's pin over its own SSH session's stdin.
	if _, err := io.WriteString(recv.p.Stdin, sfp+"\n"); err != nil {
		return nil, fmt.Errorf("ship: %s: giving the receiver the relay's pin: %w", recv.name, err)
	}
	if _, err := io.WriteString(relay.p.Stdin, rfp+"\n"); err != nil {
		return nil, fmt.Errorf("ship: %s: giving the relay the receiver's pin: %w", relay.name, err)
	}
	if l, err := relay.line("connection"); err != nil {
		var ee *remote.ExitError
		if errors.As(err, &ee) && ee.Status == ExitDialFailed {
			return nil, &dialFailed{reason: lastLine(ee.Stderr)}
		}
		return nil, err
	} else if !strings.HasPrefix(l, "connected ") {
		return nil, fmt.Errorf("ship: %s: expected a connected line, got %q", relay.name, l)
	}
	return finish(relay, recv, PathDirect, 0, relay.summaryFromStdout, recv.summaryFromStdout)
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

// finish waits for both ends and collects their summaries. The relay's
// result decides: it exits 0 only after the receiver acknowledged.
func finish(relay, recv *end, path string, wire int64, relaySum, recvSum func() (json.RawMessage, error)) (*Result, error) {
	var (
		wg          sync.WaitGroup
		rsum        json.RawMessage
		rerr        error
		ssum        json.RawMessage
		serr, swerr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		rsum, rerr = recvSum()
		if rerr == nil {
			rerr = recv.p.Wait()
		}
	}()
	ssum, serr = relaySum()
	swerr = relay.p.Wait()
	if serr == nil {
		serr = swerr
	}
	// Once the relay has its answer the receiver has nothing more to say:
	// closing its stdin ends it if it is still waiting.
	recv.p.Stdin.Close()
	relay.p.Stdin.Close()
	wg.Wait()
	if serr != nil {
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			// The receiver's own reason is usually the more telling one.
			return nil, fmt.Errorf("%v (receiver: %v)", serr, rerr)
		}
		return nil, serr
	}
	if rerr != nil {
		return nil, rerr
	}
	return &Result{Path: path, Relay: ssum, Recv: rsum, WireBytes: wire}, nil
}

func (s *Ship) overSSH(ctx context.Context) (*Result, error) {
	recv, err := s.start(ctx, s.To, s.recvArgs("--stdio"))
	if err != nil {
		return nil, err
	}
	defer recv.p.Close()
	rfp, err := recv.fingerprint()
	if err != nil {
		return nil, err
	}
	relay, err := s.start(ctx, s.From, s.sendArgs("--stdio"))
	if err != nil {
		return nil, err
	}
	defer relay.p.Close()
	sfp, err := relay.fingerprint()
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(recv.p.Stdin, sfp+"\n"); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(relay.p.Stdin, rfp+"\n"); err != nil {
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
	go splice(recv.p.Stdin, relay.out)
	go splice(relay.p.Stdin, recv.out)
	res, err := finish(relay, recv, PathSSH, 0, relay.summaryFromStderr, recv.summaryFromStderr)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	res.WireBytes = wire.Load()
	return res, nil
}

// captureWriter passes stderr through and keeps the last JSON line (the
// --json summary of an end whose stdout is the channel).
type captureWriter struct {
	w    io.WriteCloser
	mu   sync.Mutex
	buf  []byte
	last json.RawMessage
}

func (c *captureWriter) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.buf = append(c.buf, b...)
	var pass []byte
	for {
		i := strings.IndexByte(string(c.buf), '\n')
		if i < 0 {
			break
		}
		l := c.buf[:i+1]
		if len(l) > 1 && l[0] == '{' && json.Valid(l[:i]) {
			c.last = append(json.RawMessage(nil), l[:i]...)
		} else {
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

func (c *captureWriter) json() json.RawMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
