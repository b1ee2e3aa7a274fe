// Package ends runs the two ends of nbship's channel. Receive is the
// listening end (nbship recv): it puts what arrives in a Target, a
// directory (Dir), an image slot (Slot) or this host's Nix store (Store).
// Send is the dialling end (nbship send): it streams a Source, files
// (Files) or store paths (StorePaths). Each meets the other end as
// internal/protocol describes: it prints its fingerprint line, reads the
// other's pin, connects, streams, and returns the transfer's figures;
// cmd/nbship parses the flags and prints them.
package ends

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// Channel is what both ends share: their process's streams, how they meet
// the other end, and the hooks of the command that runs them.
type Channel struct {
	Stdin  io.Reader
	Stdout io.Writer // the protocol's lines; with Stdio, the channel too
	Stderr io.Writer // notes ("nbship: recv: ..."); with Stdio, the summary

	// Stdio carries the channel on Stdin and Stdout instead of TCP.
	Stdio bool
	// PeerPin is the other end's pin, or "-" to read its fingerprint line
	// from Stdin.
	PeerPin string
	// Lifeline stops the end when Stdin closes (the controller that
	// started it went away); not with Stdio.
	Lifeline bool
	// Idle is how long no byte may cross the channel before the end gives
	// up; 0 for DefaultIdle.
	Idle time.Duration

	// Progress, if set, shows c while the stream moves (paths: c counts
	// store paths) until the returned function is called.
	Progress func(c *transfer.Counters, paths bool) (stop func())
	// Exit, if set, ends the process when the idle watchdog fires and the
	// end is still blocked five seconds later (on a pipe that no close
	// can interrupt), after removing what it staged. Nil: never.
	Exit func(code int)
}

// DefaultIdle is how long an end waits with no byte moving on the channel
// before it decides the other end, its host or the link is gone.
const DefaultIdle = 60 * time.Second

func (c *Channel) logf(role, format string, a ...any) {
	fmt.Fprintf(c.Stderr, "nbship: "+role+": "+format+"\n", a...)
}

func (c *Channel) progress(cnt *transfer.Counters, paths bool) (stop func()) {
	if c.Progress == nil {
		return func() {}
	}
	return c.Progress(cnt, paths)
}

// checkMeet refuses options that name no peer pin, or not exactly one way
// to meet the other end. Before anything is printed: the controller reads
// an end's first line as its pin.
func (c *Channel) checkMeet(role, addrFlag, addr string) error {
	if c.PeerPin == "" {
		return usage("%s: --peer-pin is required: the other end's fingerprint line, or - to read it from standard input", role)
	}
	if (addr == "") == !c.Stdio {
		return usage("%s: give exactly one of %s ADDR or --stdio", role, addrFlag)
	}
	return nil
}

func usage(format string, a ...any) error {
	return &protocol.Error{Code: protocol.ExitUsage, Err: fmt.Errorf(format, a...)}
}

// readLine reads one line a byte at a time, so that nothing after it is
// consumed: in --stdio mode the TLS bytes follow on the same stream.
func readLine(r io.Reader, max int) (string, error) {
	var line []byte
	var b [1]byte
	for len(line) <= max {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(line), nil
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			if len(line) > 0 {
				return string(line), nil
			}
			return "", errors.New("standard input ended before the peer's pin")
		}
		if err != nil {
			return "", err
		}
	}
	return "", errors.New("the peer's pin line is too long")
}

// peerPin resolves PeerPin: a pin, or "-" for one line of stdin.
func peerPin(flag string, stdin io.Reader) (string, error) {
	if flag == "-" {
		line, err := readLine(stdin, 200)
		if err != nil {
			return "", fmt.Errorf("reading --peer-pin from standard input: %w", err)
		}
		flag = line
	}
	// Accept the other end's whole first line too.
	flag = protocol.ParseFingerprint(flag)
	return tunnel.ParsePin(flag)
}

// lifeline cancels ctx when stdin reaches EOF: the controller that started
// this end over SSH is gone (sshd closes stdin when the session dies).
func lifeline(ctx context.Context, stdin io.Reader) context.Context {
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		io.Copy(io.Discard, stdin)
		cancel(errors.New("the controller went away (standard input closed)"))
	}()
	return ctx
}

// summary is an end's --json object for the transfer st.
func summary(st *transfer.Stats, conn *tunnel.Conn, stdio bool) protocol.Stream {
	wire := conn.WireBytes()
	s := protocol.Stream{
		Files: st.Files, FilesSent: st.Sent, Reused: st.Reused, Bytes: st.Bytes,
		Compressed: st.Compressed, Stored: st.Stored, Level: st.Level, WireBytes: wire, Seconds: protocol.Round(st.Seconds, 3), Published: st.Published,
		Resumed: st.Resumed, PeakRSS: PeakRSS(os.Getpid()),
	}
	if !stdio {
		s.Lanes = conn.Lanes()
	}
	if st.Compressed > 0 {
		s.Ratio = protocol.Round(float64(st.Bytes)/float64(st.Compressed), 2)
	}
	if st.Seconds > 0 {
		s.MBps = protocol.Round(float64(st.Bytes)/1e6/st.Seconds, 1)
	}
	return s
}

// watchdog is an end's idle watch over its connection, and what it must
// undo when it forces the process out.
type watchdog struct {
	msg      string
	fired    atomic.Bool
	mu       sync.Mutex
	cleanups []func()
}

// watchIdle cancels the returned context when nothing has crossed conn for
// c.Idle; w.explain turns the transfer's error into one that says so. An
// end blocked on a pipe that no close can interrupt (--stdio under an SSH
// session whose connection died unnoticed) exits through c.Exit five
// seconds later with the same line rather than wait for ever, after the
// cleanups given to w.atExit (what it staged is removed).
func watchIdle(ctx context.Context, c *Channel, conn *tunnel.Conn, role string) (context.Context, *watchdog, func()) {
	idle := c.Idle
	if idle <= 0 {
		idle = DefaultIdle
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &watchdog{msg: fmt.Sprintf("%s: nothing crossed the channel for %v: the other end, its host or the link is gone", role, idle)}
	stop := conn.Watch(idle, func() {
		w.fired.Store(true)
		cancel()
		if c.Exit != nil {
			time.AfterFunc(5*time.Second, func() {
				fmt.Fprintf(c.Stderr, "nbship: %s\n", w.msg)
				w.runCleanups()
				c.Exit(1)
			})
		}
	})
	return ctx, w, func() { stop(); cancel() }
}

// atExit has f run before a forced exit.
func (w *watchdog) atExit(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cleanups = append(w.cleanups, f)
}

func (w *watchdog) runCleanups() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.cleanups {
		f()
	}
}

// explain says that the watchdog stopped the transfer, if it did.
func (w *watchdog) explain(err error) error {
	if err != nil && w.fired.Load() {
		return errors.New(w.msg)
	}
	return err
}

// sayRefused prints, for the controller (an end started with Lifeline),
// the protocol's Refusal line when err is a refusal: before the error
// itself, which the command prints.
func (c *Channel) sayRefused(err error) {
	if code, _ := protocol.Explain(err); !c.Lifeline || code != protocol.ExitRefused {
		return
	}
	var pe *transfer.PeerRefusedError
	r := protocol.Refusal{Peer: errors.As(err, &pe), Reason: protocol.Reason(err)}
	fmt.Fprintln(c.Stderr, r.Line())
}

// Refusal gives err the exit status that tells the controller not to
// retry: what was sent was refused (ExitRefused), or a certificate did
// not match (ExitPin).
func Refusal(err error) error {
	var (
		pe *tunnel.PinError
		re *tunnel.RefusedError
	)
	switch {
	case transfer.IsRefusal(err):
		return &protocol.Error{Code: protocol.ExitRefused, Err: err}
	case errors.As(err, &pe), errors.As(err, &re):
		return &protocol.Error{Code: protocol.ExitPin, Err: err}
	}
	return err
}

// PeakRSS is process pid's peak resident set (the kernel's VmHWM), in
// KiB; 0 when it cannot be read.
func PeakRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}
