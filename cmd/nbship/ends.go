package main

// The flags and the printing that recv and sender share; the ends
// themselves are internal/ends.

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/nbship/nbship/internal/ends"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// endFlags are the flags both ends take: how they meet the other end,
// what watches them, and how they report.
type endFlags struct {
	e        *env
	stdio    bool
	pin      string
	json     bool
	idle     time.Duration
	lifeline bool
}

// addEndFlags adds the ends' shared flags to fs; other names the other end.
func addEndFlags(e *env, fs *pflag.FlagSet, other string) *endFlags {
	f := &endFlags{e: e}
	fs.BoolVar(&f.stdio, "stdio", false, "carry the TLS channel on standard input and output instead of TCP")
	fs.StringVar(&f.pin, "peer-pin", "", "the "+other+"'s `PIN` (SHA256:...), or - to read its fingerprint line from standard input")
	fs.BoolVar(&f.json, "json", false, "print a JSON summary (on stdout; on stderr with --stdio)")
	fs.DurationVar(&f.idle, "idle-timeout", ends.DefaultIdle, "give up when no byte has crossed the channel for this `DURATION` (the other end, its host or the link is gone)")
	fs.BoolVar(&f.lifeline, "stdin-lifeline", false, "stop when standard input closes (set by the controller)")
	fs.MarkHidden("stdin-lifeline")
	return f
}

// channel is the ends.Channel of the flags and the process; label names
// the end in its progress lines.
func (f *endFlags) channel(label string) ends.Channel {
	c := ends.Channel{
		Stdin: f.e.stdin, Stdout: f.e.stdout, Stderr: f.e.stderr,
		Stdio: f.stdio, PeerPin: f.pin, Lifeline: f.lifeline, Idle: f.idle,
		Progress: func(cnt *transfer.Counters, paths bool) func() { return progress(f.e, label, cnt, paths) },
	}
	if f.e.stdin == os.Stdin {
		// Only a real process may be forced out: a test's is its own.
		c.Exit = os.Exit
	}
	return c
}

// out is where the summary goes: stdout with --json, unless stdout is the
// channel; stderr otherwise.
func (f *endFlags) out() io.Writer {
	if f.stdio || !f.json {
		return f.e.stderr
	}
	return f.e.stdout
}

// isTerminal reports whether f (a reader or writer) is a terminal.
func isTerminal(f any) bool {
	osf, ok := f.(*os.File)
	return ok && term.IsTerminal(int(osf.Fd()))
}

// printSummary writes s as JSON (asJSON) or as one human line, to w;
// paths: s counts store paths (and their NARs), not files.
func printSummary(w io.Writer, asJSON bool, verb string, s protocol.Stream, paths bool) {
	if asJSON {
		printJSON(w, s)
		return
	}
	what, raw := "files", "raw"
	if paths {
		what, raw = "store paths", "of NARs"
	}
	fmt.Fprintf(w, "%s %d %s (%d sent, %d already there), %s %s, %s on the wire (ratio %.2f) in %.2fs, %.1f MB/s\n",
		verb, s.Files, what, s.FilesSent, s.Reused, transfer.HumanBytes(s.Bytes), raw, transfer.HumanBytes(s.WireBytes), s.Ratio, s.Seconds, s.MBps)
}

// endMemoryLimit is the soft memory limit of recv and sender. Both stream:
// their live heap is a few buffers and the zstd state, whatever the size of
// the transfer, but Go's collector would let garbage grow the heap to twice
// that before collecting. GOMEMLIMIT, when set, wins.
const endMemoryLimit = 40 << 20

func limitMemory(e *env) {
	if e.getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(endMemoryLimit)
	}
}

// lanesFlag is --lanes: how many TCP connections the sender may open to
// the receiver; check it with checkLanes after parsing.
func lanesFlag(fs *pflag.FlagSet) *int {
	return fs.Int("lanes", tunnel.DefaultLanes, fmt.Sprintf("the direct path opens up to `N` TCP connections to the receiver when its TCP handshake takes %v or more, as one connection fills a long link slowly; 1: always one", tunnel.LongRTT))
}

func checkLanes(cmd string, n int) error {
	if n < 1 || n > tunnel.MaxLanes {
		return usageError("%s: --lanes %d: give 1 to %d", cmd, n, tunnel.MaxLanes)
	}
	return nil
}
