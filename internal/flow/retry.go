package flow

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Exit statuses of the remote ends that say "running it again will not
// help": the receiver refused what it was sent (a bad name, a bad image), or
// a certificate did not match its pin.
const (
	ExitRefused = 65 // EX_DATAERR
	ExitPin     = 77 // EX_NOPERM
)

// Retryable reports whether a failed transfer may succeed when run again:
// an end that died, a link that dropped, a host that went away. Refusals,
// pin mismatches, usage errors and a cancelled run are final.
func Retryable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return false
	}
	if ExitCode(err) != 0 {
		return false
	}
	if status, _, ok := exitStatus(err); ok && status == 2 {
		return false // a usage error of the end's command line
	}
	return true
}

// RefusedError is a transfer the receiver refused: what it was sent broke
// a rule of the stream or did not verify (a hash, the image's kernel).
// Sending it again would be refused again.
type RefusedError struct {
	By     string // the receiving host
	Reason string // the receiver's own line
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("ship: %s refused what it was sent: %s", e.By, e.Reason)
}

// ExitCode is the exit status a failed run passes on from its ends: a
// refusal (ExitRefused) or a pin mismatch (ExitPin) at either end; 0 for
// any other error.
func ExitCode(err error) int {
	var re *RefusedError
	if errors.As(err, &re) {
		return ExitRefused
	}
	if status, _, ok := exitStatus(err); ok && (status == ExitRefused || status == ExitPin) {
		return status
	}
	return 0
}

// refusalReason is the line of an end's stderr that says what it refused,
// without the "nbship: " and the layers' prefixes.
func refusalReason(stderr string) string {
	var line string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "nbship: hint:") {
			line = l
		}
	}
	for again := true; again; {
		again = false
		for _, p := range []string{"nbship: ", "recv: ", "relay: ", "transfer: ", "the receiver refused the stream: ", "refused stream: "} {
			if l, ok := strings.CutPrefix(line, p); ok {
				line, again = l, true
			}
		}
	}
	return line
}
