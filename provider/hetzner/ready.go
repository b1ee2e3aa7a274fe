package hetzner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/nbship/nbship/remote"
)

// Defaults for SSHOptions.
const (
	DefaultSSHTimeout  = 5 * time.Minute
	DefaultSSHInterval = 5 * time.Second
)

// SSHOptions say how Ready reaches a new server.
type SSHOptions struct {
	Config   remote.Config // how to reach hosts; AcceptNew is set by Ready
	Timeout  time.Duration // for the whole wait; DefaultSSHTimeout if 0
	Interval time.Duration // between tries; DefaultSSHInterval if 0
	Log      io.Writer     // progress and the host key line; nil discards
}

// Ready waits until dest (root@IP of a server just made) lets us in over
// SSH, and then runs boot on that connection (the kexec of the published
// image) and closes it.
//
// The server is new, so its host key cannot be known yet: the first key it
// presents is trusted and added to the first known_hosts file, as
// StrictHostKeyChecking=accept-new does, and said in one line on Log. A
// key that differs from one known_hosts already holds for the address is
// never accepted: the address was another server's before, and the old
// line must go first.
func Ready(ctx context.Context, dest string, o SSHOptions, boot func(context.Context, *remote.Client) error) error {
	c, err := WaitSSH(ctx, dest, o)
	if err != nil {
		return err
	}
	defer c.Close()
	if boot == nil {
		return nil
	}
	return boot(ctx, c)
}

// WaitSSH is the waiting half of Ready: it returns the connection.
func WaitSSH(ctx context.Context, dest string, o SSHOptions) (*remote.Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultSSHTimeout
	}
	if o.Interval <= 0 {
		o.Interval = DefaultSSHInterval
	}
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	cfg := o.Config
	cfg.AcceptNew = true
	cfg.Log = log
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	fmt.Fprintf(log, "hetzner: waiting for SSH on %s (up to %s)\n", dest, o.Timeout)
	var last error
	for {
		c, err := remote.Dial(wctx, dest, cfg)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hetzner: waiting for SSH on %s: %w", dest, ctx.Err())
		}
		if final(err) {
			return nil, err
		}
		// A try the overall deadline cut short says less than the one
		// before it.
		var ne net.Error
		if last == nil || (wctx.Err() == nil && !(errors.As(err, &ne) && ne.Timeout())) {
			last = err
		}
		t := time.NewTimer(o.Interval)
		select {
		case <-t.C:
		case <-wctx.Done():
			t.Stop()
		}
		if wctx.Err() != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("hetzner: waiting for SSH on %s: %w", dest, ctx.Err())
			}
			return nil, &SSHTimeoutError{Dest: dest, Timeout: o.Timeout, Last: last}
		}
	}
}

// final reports whether trying again cannot help: a host key that is
// changed or revoked, or a server that refuses our key (the rescue system
// lets it in from its first moment, so it will not change its mind).
func final(err error) bool {
	var hk *remote.HostKeyError
	if errors.As(err, &hk) {
		return hk.Changed || hk.Revoked
	}
	return strings.Contains(err.Error(), "refused every key")
}

// SSHTimeoutError says a server did not answer SSH in time.
type SSHTimeoutError struct {
	Dest    string
	Timeout time.Duration
	Last    error
}

func (e *SSHTimeoutError) Error() string {
	return fmt.Sprintf("hetzner: %s did not answer SSH within %s (last: %v)", e.Dest, e.Timeout, e.Last)
}

func (e *SSHTimeoutError) Unwrap() error { return e.Last }
