package protocol

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nbship/nbship/remote"
)

// Exit statuses of the ends (and of the controller, which passes the
// final ones on).
const (
	// ExitUsage is a usage error: the command line was wrong.
	ExitUsage = 2
	// ExitRefused is the receiver refusing what it was sent (a bad name,
	// a hash that does not match, a kernel for another architecture), and
	// the sender it told: sending it again would be refused again.
	ExitRefused = 65 // EX_DATAERR
	// ExitDialFailed is the sender's when it could not reach the receiver
	// at all (as opposed to reaching it and failing): the one failure
	// after which the controller may carry the channel over SSH instead.
	ExitDialFailed = 75 // EX_TEMPFAIL
	// ExitPin is a certificate that did not match its pin, on either end.
	ExitPin = 77 // EX_NOPERM
)

// Status is the exit status and stderr of an end that ran and failed,
// found in err's chain; ok is false when err says no such thing.
func Status(err error) (status int, stderr string, ok bool) {
	var ee *remote.ExitError
	if errors.As(err, &ee) {
		return ee.Status, ee.Stderr, true
	}
	return 0, "", false
}

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
	if status, _, ok := Status(err); ok && status == ExitUsage {
		return false
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

// Refused turns an end's exit with ExitRefused into a RefusedError by the
// receiving host by, for the Refusal line r the end printed (nil if it
// printed none); nil for any other error.
func Refused(by string, err error, r *Refusal) *RefusedError {
	status, stderr, ok := Status(err)
	if !ok || status != ExitRefused {
		return nil
	}
	if r != nil {
		return &RefusedError{By: by, Reason: r.Reason}
	}
	// An end that said nothing in the protocol's words: its last line.
	stderr = strings.TrimSpace(stderr)
	return &RefusedError{By: by, Reason: stderr[strings.LastIndexByte(stderr, '\n')+1:]}
}

// ExitCode is the exit status a failed run passes on from its ends: a
// refusal (ExitRefused) or a pin mismatch (ExitPin) at either end; 0 for
// any other error.
func ExitCode(err error) int {
	if code, _ := Explain(err); code == ExitRefused || code == ExitPin {
		return code
	}
	var re *RefusedError
	if errors.As(err, &re) {
		return ExitRefused
	}
	if status, _, ok := Status(err); ok && (status == ExitRefused || status == ExitPin) {
		return status
	}
	return 0
}

// Reason is what a refusal err says was wrong, without the layers'
// prefixes ("recv: ", "transfer: ", the sender's "the receiver refused the
// stream: "): the Reason of the end's Refusal line.
func Reason(err error) string {
	line := err.Error()
	for again := true; again; {
		again = false
		for _, p := range []string{"recv: ", "send: ", "transfer: ", "the receiver refused the stream: ", "refused stream: "} {
			if l, ok := strings.CutPrefix(line, p); ok {
				line, again = l, true
			}
		}
	}
	return line
}

// Error is an error that asks for a specific exit status (Code, 0 for
// none), a hint line telling the user what to do (Hint), or both. The
// ends return it; the command prints Err, then the hint, and exits Code.
type Error struct {
	Code int
	Err  error
	Hint string
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Explain is the exit status and the hint that err asks for: the
// outermost Error in its chain that gives each; 0 and "" for none.
func Explain(err error) (code int, hint string) {
	for err != nil && (code == 0 || hint == "") {
		var e *Error
		if !errors.As(err, &e) {
			break
		}
		if code == 0 {
			code = e.Code
		}
		if hint == "" {
			hint = e.Hint
		}
		err = e.Err
	}
	return code, hint
}
