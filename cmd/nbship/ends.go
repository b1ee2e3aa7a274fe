package main

// Shared by the two ends of the channel, recv and relay: how each learns the
// peer's pin, watches its controller, reports progress and sums up.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

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

// peerPin resolves --peer-pin: a pin, or "-" for one line of stdin.
func peerPin(flag string, stdin io.Reader) (string, error) {
	if flag == "" {
		return "", usageError("--peer-pin is required: the other end's fingerprint line, or - to read it from standard input")
	}
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

// isTerminal reports whether f (a reader or writer) is a terminal.
func isTerminal(f any) bool {
	osf, ok := f.(*os.File)
	return ok && term.IsTerminal(int(osf.Fd()))
}

// newSummary is an end's --json object for the transfer st.
func newSummary(st *transfer.Stats, wire int64) protocol.Stream {
	s := protocol.Stream{
		Files: st.Files, FilesSent: st.Sent, Reused: st.Reused, Bytes: st.Bytes,
		Compressed: st.Compressed, Stored: st.Stored, Level: st.Level, WireBytes: wire, Seconds: round(st.Seconds, 3), Published: st.Published,
		PeakRSS: vmHWM(os.Getpid()),
	}
	s.Resumed = st.Resumed // resume (issue 21)
	if st.Compressed > 0 {
		s.Ratio = round(float64(st.Bytes)/float64(st.Compressed), 2)
	}
	if st.Seconds > 0 {
		s.MBps = round(float64(st.Bytes)/1e6/st.Seconds, 1)
	}
	return s
}

func round(f float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(f*p+0.5)) / p
}

// printSummary writes s as JSON (asJSON) or as one human line, to w.
func printSummary(w io.Writer, asJSON bool, verb string, s protocol.Stream) {
	if asJSON {
		printJSON(w, s)
		return
	}
	fmt.Fprintf(w, "%s %d files (%d sent, %d already there), %s raw, %s on the wire (ratio %.2f) in %.2fs, %.1f MB/s\n",
		verb, s.Files, s.FilesSent, s.Reused, transfer.HumanBytes(s.Bytes), transfer.HumanBytes(s.WireBytes), s.Ratio, s.Seconds, s.MBps)
}

// defaultIdle is how long an end waits with no byte moving on the channel
// before it decides the other end, its host or the link is gone.
const defaultIdle = 60 * time.Second

func addIdleFlag(fs *pflag.FlagSet) *time.Duration {
	return fs.Duration("idle-timeout", defaultIdle, "give up when no byte has crossed the channel for this `DURATION` (the other end, its host or the link is gone)")
}

// Cleanups that must run even when an end exits without returning (the
// idle watchdog's forced exit): removing what it staged.
var (
	forcedExitMu       sync.Mutex
	forcedExitCleanups []func()
)

// atForcedExit registers f to run before a forced exit.
func atForcedExit(f func()) {
	forcedExitMu.Lock()
	defer forcedExitMu.Unlock()
	forcedExitCleanups = append(forcedExitCleanups, f)
}

func runForcedExitCleanups() {
	forcedExitMu.Lock()
	defer forcedExitMu.Unlock()
	for _, f := range forcedExitCleanups {
		f()
	}
}

// watchIdle cancels the returned context when nothing has crossed conn for
// idle; the returned function turns the transfer's error into one that
// says so. An end blocked on a pipe that no close can interrupt (--stdio
// under an SSH session whose connection died unnoticed) exits five seconds
// later with the same line rather than wait for ever, after the cleanups
// registered with atForcedExit (what it staged is removed).
func watchIdle(ctx context.Context, e *env, conn *tunnel.Conn, idle time.Duration, role string) (context.Context, func(error) error, func()) {
	ctx, cancel := context.WithCancel(ctx)
	msg := fmt.Sprintf("%s: nothing crossed the channel for %v: the other end, its host or the link is gone", role, idle)
	var fired atomic.Bool
	stop := conn.Watch(idle, func() {
		fired.Store(true)
		cancel()
		if e.stdin == os.Stdin {
			time.AfterFunc(5*time.Second, func() {
				fmt.Fprintf(e.stderr, "nbship: %s\n", msg)
				runForcedExitCleanups()
				os.Exit(1)
			})
		}
	})
	explain := func(err error) error {
		if err != nil && fired.Load() {
			return errors.New(msg)
		}
		return err
	}
	return ctx, explain, func() { stop(); cancel() }
}

// refusal gives err the exit status that tells the controller not to
// retry: what was sent was refused, or a certificate did not match.
func refusal(err error) error {
	var (
		pe *tunnel.PinError
		re *tunnel.RefusedError
	)
	switch {
	case transfer.IsRefusal(err):
		return &exitError{code: protocol.ExitRefused, err: err}
	case errors.As(err, &pe), errors.As(err, &re):
		return &exitError{code: protocol.ExitPin, err: err}
	}
	return err
}

// endMemoryLimit is the soft memory limit of recv and relay. Both stream:
// their live heap is a few buffers and the zstd state, whatever the size of
// the transfer, but Go's collector would let garbage grow the heap to twice
// that before collecting. GOMEMLIMIT, when set, wins.
const endMemoryLimit = 40 << 20

func limitMemory(e *env) {
	if e.getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(endMemoryLimit)
	}
}

// vmHWM is process pid's peak resident set (the kernel's VmHWM), in KiB;
// 0 when it cannot be read.
func vmHWM(pid int) int64 {
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
