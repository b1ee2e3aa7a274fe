// Package protocol is what the controller and the two ends of a transfer
// say to each other around the stream: the ends' command lines (Recv,
// Send), the lines they print on stdout before the stream (their pin,
// where the receiver listens, that the sender connected), their exit
// statuses, the Refusal line on stderr that says what a refusal (exit 65)
// was, and their --json summaries, which the controller, the tests and
// the bench read.
//
// An end is started with --stdin-lifeline and --peer-pin -: its first
// stdin line is the other end's fingerprint line, and when its stdin
// closes (the controller went away) it stops.
package protocol

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The lines an end prints on stdout before the stream.
const (
	fingerprintPrefix = "fingerprint "
	listeningPrefix   = "listening "
	connectedPrefix   = "connected "
)

// FingerprintLine is an end's first line: its certificate's pin.
func FingerprintLine(pin string) string { return fingerprintPrefix + pin }

// ParseFingerprint takes the pin from a fingerprint line; a bare pin is
// accepted too.
func ParseFingerprint(line string) string {
	p, _ := strings.CutPrefix(line, fingerprintPrefix)
	return p
}

// IsFingerprint reports whether line is a fingerprint line.
func IsFingerprint(line string) bool { return strings.HasPrefix(line, fingerprintPrefix+"SHA256:") }

// ListeningLine is the receiver's second line: where it listens.
func ListeningLine(addr string) string { return listeningPrefix + addr }

// ParseListening takes the address from a listening line.
func ParseListening(line string) (string, error) {
	a, ok := strings.CutPrefix(line, listeningPrefix)
	if !ok {
		return "", fmt.Errorf("expected a listening line, got %q", line)
	}
	return a, nil
}

// ConnectedLine is what the sender prints once it reached the receiver.
func ConnectedLine(addr string) string { return connectedPrefix + addr }

// IsConnected reports whether line is a connected line.
func IsConnected(line string) bool { return strings.HasPrefix(line, connectedPrefix) }

// Refusal is the line an end started by the controller prints on stderr
// when it exits ExitRefused, before its error: what was refused, in a
// form the controller reads without parsing the error's prose. Peer is a
// sender repeating the receiver's refusal: the lines after it say again
// what the receiver said, and are not the operator's to read twice.
type Refusal struct {
	Peer   bool
	Reason string
}

const refusalPrefix = "refusal "

// Line is r as one line: refusal self|peer "REASON" (Go-quoted, so that
// no reason a peer sent can start a line of its own).
func (r Refusal) Line() string {
	who := "self "
	if r.Peer {
		who = "peer "
	}
	return refusalPrefix + who + strconv.Quote(r.Reason)
}

// ParseRefusal reads a Refusal line; ok is false for any other line.
func ParseRefusal(line string) (r Refusal, ok bool) {
	rest, ok := strings.CutPrefix(line, refusalPrefix)
	if !ok {
		return Refusal{}, false
	}
	switch {
	case strings.HasPrefix(rest, "self "):
	case strings.HasPrefix(rest, "peer "):
		r.Peer = true
	default:
		return Refusal{}, false
	}
	q := rest[len("self "):]
	if !strings.HasPrefix(q, `"`) {
		return Refusal{}, false
	}
	reason, err := strconv.Unquote(q)
	if err != nil {
		return Refusal{}, false
	}
	r.Reason = reason
	return r, true
}

// Recv is the receiving end's command line: where it takes the channel
// from, and where it puts what arrives (exactly one of Dest, Publish and
// Store).
type Recv struct {
	Listen        string // host:port; "" with Stdio
	Stdio         bool
	AcceptTimeout time.Duration

	Dest    string // a directory
	Replace bool   // with Dest: swap a non-empty one atomically

	Publish  string // pxeDir: a new generation of the instance's slot
	Instance string
	System   string // of an instance type nbship does not know
	Keep     int
	// KeepPartial (with Publish or Store) leaves what a failed attempt
	// received for the next.
	KeepPartial bool

	Store bool // import into the host's Nix store
	// Substitute: with Store, get what the host lacks from its own
	// substituters first, and want only the rest.
	Substitute bool

	Idle time.Duration
}

// Args is the command line after nbship's path.
func (r Recv) Args() ([]string, error) {
	a, err := meet("recv", r.Stdio, "--listen", r.Listen, "--accept-timeout", r.AcceptTimeout)
	if err != nil {
		return nil, err
	}
	n := 0
	if r.Dest != "" {
		n++
		a = append(a, "--dest", r.Dest)
		if r.Replace {
			a = append(a, "--replace")
		}
	}
	if r.Publish != "" {
		n++
		a = append(a, "--pxe-dir", r.Publish, "--instance", r.Instance)
		if r.System != "" {
			a = append(a, "--system", r.System)
		}
		if r.Keep > 0 {
			a = append(a, "--keep", strconv.Itoa(r.Keep))
		}
	}
	if r.Store {
		n++
		a = append(a, "--store")
		if r.Substitute {
			a = append(a, "--substitute")
		}
	}
	if n != 1 {
		return nil, errors.New("protocol: recv needs exactly one of Dest, Publish and Store")
	}
	if r.KeepPartial && r.Dest == "" {
		a = append(a, "--keep-partial")
	}
	if r.Idle > 0 {
		a = append(a, "--idle-timeout", r.Idle.String())
	}
	return append(a, "--peer-pin", "-", "--json", "--stdin-lifeline"), nil
}

// Send is the sending end's command line.
type Send struct {
	Connect     string // host:port; "" with Stdio
	Stdio       bool
	DialTimeout time.Duration
	// Lanes: at most this many TCP connections on a long link; 0 for
	// the end's default.
	Lanes int

	// Store sends the closure of Paths as store paths (for a Recv with
	// Store); StoreFiles their files (for a Recv with Dest). Store paths
	// go on stdin, up to an empty line, ahead of the pin line (after it
	// is taken too).
	Store, StoreFiles bool
	// Paths to send: files and directories, or store paths.
	Paths []string

	FollowAnySymlink bool
	// SignKey, with Store: a Nix secret key file on the sending host to
	// sign each path with on the way (its path only crosses).
	SignKey string
	Level   string // zstd level; "" for the end's default
	Idle    time.Duration
}

// Args is the command line after nbship's path.
func (r Send) Args() ([]string, error) {
	a, err := meet("send", r.Stdio, "--connect", r.Connect, "--dial-timeout", r.DialTimeout)
	if err != nil {
		return nil, err
	}
	if r.Store && r.StoreFiles {
		return nil, errors.New("protocol: sender takes at most one of Store and StoreFiles")
	}
	if r.Store {
		a = append(a, "--store")
		if r.SignKey != "" {
			a = append(a, "--sign-key", r.SignKey)
		}
	}
	if r.StoreFiles {
		a = append(a, "--store-files")
	}
	if r.FollowAnySymlink {
		a = append(a, "--follow-any-symlink")
	}
	if r.Level != "" {
		a = append(a, "--level", r.Level)
	}
	if r.Lanes > 0 && !r.Stdio {
		a = append(a, "--lanes", strconv.Itoa(r.Lanes))
	}
	if r.Idle > 0 {
		a = append(a, "--idle-timeout", r.Idle.String())
	}
	a = append(a, "--peer-pin", "-", "--json", "--stdin-lifeline")
	if r.Store || r.StoreFiles {
		return a, nil // the paths come on stdin
	}
	if len(r.Paths) == 0 {
		return nil, errors.New("protocol: sender has no path to send")
	}
	return append(append(a, "--"), r.Paths...), nil
}

// meet starts an end's command line with how it meets the other end:
// over its stdin and stdout, or at addr (--listen or --connect) within
// timeout.
func meet(end string, stdio bool, addrFlag, addr, timeoutFlag string, timeout time.Duration) ([]string, error) {
	a := []string{end}
	switch {
	case stdio:
		return append(a, "--stdio"), nil
	case addr == "":
		return nil, fmt.Errorf("protocol: %s needs %s or --stdio", end, addrFlag)
	}
	a = append(a, addrFlag, addr)
	if timeout > 0 {
		a = append(a, timeoutFlag, timeout.String())
	}
	return a, nil
}

// StdinPaths is what the sender reads on stdin ahead of the pin line: the
// store paths to send, then an empty line. Nil for a sender of files.
func (r Send) StdinPaths() []string {
	if r.Store || r.StoreFiles {
		return r.Paths
	}
	return nil
}
