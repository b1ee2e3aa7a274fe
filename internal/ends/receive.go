package ends

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// ReceiveOptions are the receiving end's.
type ReceiveOptions struct {
	Channel
	// Listen is the HOST:PORT to listen on ("" with Stdio); port 0 picks
	// a free one, printed on the listening line.
	Listen string
	// AcceptTimeout is how long to wait for the pinned sender to connect
	// (and for a busy Listen address to come free).
	AcceptTimeout time.Duration
	Target        Target
}

// Target is where a receiver puts what arrives: Dir, Slot or Store.
type Target interface {
	// prepare checks the target and readies it, before anything is
	// printed.
	prepare(ctx context.Context, c *Channel) (target, error)
}

// target is a prepared Target.
type target interface {
	// stage makes the sink the stream goes into (ctx is the stream's).
	stage(ctx context.Context) (transfer.Sink, error)
	// commit puts what was verified in place and names where it went.
	commit() (string, error)
	// cleanup removes what a failed receive left (or a replaced tree);
	// it runs at a forced exit too.
	cleanup()
	// close ends the sink; an error is the transfer's.
	close() error
	// report adds what only this target knows to the summary.
	report(s *protocol.Stream)
}

// Receive runs the receiving end: it prints its fingerprint line (and,
// over TCP, its listening line) on Stdout, takes the sender's pin,
// accepts the pinned sender, and receives one stream into o.Target. The
// summary is the transfer's figures; an error that must not be retried
// is a protocol.Error with its exit status.
func Receive(ctx context.Context, o ReceiveOptions) (_ *protocol.Stream, err error) {
	defer func() { o.sayRefused(err) }()
	if err := o.checkMeet("recv", "--listen", o.Listen); err != nil {
		return nil, err
	}
	if o.Target == nil {
		return nil, usage("recv: no target to receive into")
	}
	t, err := o.Target.prepare(ctx, &o.Channel)
	if err != nil {
		return nil, err
	}
	defer t.close()
	id, err := tunnel.NewIdentity()
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	if !o.Stdio {
		lctx, cancel := context.WithTimeout(ctx, o.AcceptTimeout)
		ln, err = tunnel.Listen(lctx, o.Listen, func() {
			o.logf("recv", "%s is in use (another transfer to this host?); waiting up to %v for it", o.Listen, o.AcceptTimeout)
		})
		cancel()
		if err != nil {
			return nil, hint(fmt.Errorf("recv: %w", err), "pick another port (opensslPort) or stop what is using it")
		}
		defer ln.Close()
	}
	fmt.Fprintln(o.Stdout, protocol.FingerprintLine(id.Pin()))
	if ln != nil {
		fmt.Fprintln(o.Stdout, protocol.ListeningLine(ln.Addr().String()))
	}
	pin, err := peerPin(o.PeerPin, o.Stdin)
	if err != nil {
		return nil, err
	}
	if o.Lifeline && !o.Stdio {
		ctx = lifeline(ctx, o.Stdin)
	}

	var conn *tunnel.Conn
	if o.Stdio {
		conn, err = tunnel.ServerOver(ctx, tunnel.NewStdioConn(o.Stdin, o.Stdout), id, pin)
		if err != nil {
			return nil, fmt.Errorf("recv: %w", err)
		}
	} else {
		actx, cancel := context.WithTimeoutCause(ctx, o.AcceptTimeout, errors.New("no sender connected in time"))
		defer cancel()
		// AcceptLanes closes ln once no more of the sender's lanes can join.
		conn, err = tunnel.AcceptLanes(actx, ln, id, pin, func(err error) { o.logf("recv", "%v", err) })
		if err != nil {
			return nil, hint(fmt.Errorf("recv: %w", err), "check that the sender can reach %s and was given this receiver's fingerprint", ln.Addr())
		}
	}
	defer conn.Close()
	ctx, watch, stopIdle := watchIdle(ctx, &o.Channel, conn, "recv")
	defer stopIdle()

	defer t.cleanup()
	watch.atExit(t.cleanup)
	sink, err := t.stage(ctx)
	if err != nil {
		return nil, err
	}
	cnt := new(transfer.Counters)
	_, paths := o.Target.(Store)
	stop := o.progress(cnt, paths)
	st, err := transfer.Receive(ctx, conn, sink, transfer.ReceiveOptions{Progress: cnt, Commit: t.commit})
	stop()
	if cerr := t.close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, Refusal(watch.explain(fmt.Errorf("recv: %w", err)))
	}
	s := summary(st, conn, o.Stdio)
	t.report(&s)
	return &s, nil
}

// hint gives err a line telling the user what to do.
func hint(err error, format string, a ...any) error {
	return &protocol.Error{Err: err, Hint: fmt.Sprintf(format, a...)}
}
