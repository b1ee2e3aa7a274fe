package flow

import (
	"context"
	"errors"

	"github.com/nbship/nbship/remote"
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
	var ee *remote.ExitError
	if errors.As(err, &ee) {
		switch ee.Status {
		case ExitRefused, ExitPin, 2:
			return false
		}
	}
	return true
}
