package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nbship/nbship/internal/flow"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

func init() {
	register(command{name: "relay", summary: "send files from the build host (the dialling end of the channel)", run: cmdRelay})
}

func cmdRelay(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "relay", "(--connect ADDR | --stdio) --peer-pin PIN|- [flags] PATH...")
	connect := fs.String("connect", "", "the receiver's `host:port`")
	stdio := fs.Bool("stdio", false, "carry the TLS channel on standard input and output instead of TCP")
	pinFlag := fs.String("peer-pin", "", "the receiver's `pin` (SHA256:...), or - to read its fingerprint line from standard input")
	level := fs.String("level", "default", "zstd level: fastest, default or better")
	asJSON := fs.Bool("json", false, "print a JSON summary (on stdout; on stderr with --stdio)")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "how long to keep trying to reach the receiver")
	life := fs.Bool("stdin-lifeline", false, "stop when standard input closes (set by the controller)")
	fs.MarkHidden("stdin-lifeline")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*connect == "") == !*stdio {
		return usageError("relay: give exactly one of --connect ADDR or --stdio")
	}
	if fs.NArg() == 0 {
		return usageError("relay: no PATH to send")
	}
	lvl, err := transfer.EncoderLevel(*level)
	if err != nil {
		return usageError("relay: %v", err)
	}
	src, err := transfer.Collect(ctx, fs.Args())
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "fingerprint %s\n", id.Pin())
	pin, err := peerPin(*pinFlag, e.stdin)
	if err != nil {
		return err
	}
	if *life && !*stdio {
		ctx = lifeline(ctx, e.stdin)
	}

	var conn *tunnel.Conn
	if *stdio {
		conn, err = tunnel.ClientOver(ctx, tunnel.NewStdioConn(e.stdin, e.stdout), id, pin)
	} else {
		dctx, cancel := context.WithTimeout(ctx, *dialTimeout)
		conn, err = tunnel.Dial(dctx, *connect, id, pin)
		cancel()
		var de *tunnel.DialError
		if errors.As(err, &de) && ctx.Err() == nil {
			// Never reached the receiver: the controller may take the
			// SSH path. Any other failure (a pin mismatch above all) it
			// must not paper over.
			return &exitError{code: flow.ExitDialFailed, err: fmt.Errorf("relay: %w", err)}
		}
	}
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer conn.Close()
	if !*stdio {
		fmt.Fprintf(e.stdout, "connected %s\n", conn.RemoteAddr())
	}

	cnt := new(transfer.Counters)
	stop := progress(e, "relay", cnt)
	st, err := transfer.Send(ctx, conn, src, transfer.SendOptions{Level: lvl, Progress: cnt})
	stop()
	if err != nil {
		return fmt.Errorf("relay: %w", tunnel.ReadError(err, id))
	}
	out := e.stdout
	if *stdio || !*asJSON {
		out = e.stderr
	}
	printSummary(out, *asJSON, "sent", newSummary(st, conn.WireBytes()))
	return nil
}
