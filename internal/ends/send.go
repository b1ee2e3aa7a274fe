package ends

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// SendOptions are the sending end's.
type SendOptions struct {
	Channel
	// Connect is the receiver's HOST:PORT ("" with Stdio).
	Connect string
	// DialTimeout is how long to keep trying to reach the receiver.
	DialTimeout time.Duration
	// Lanes is how many TCP connections to open to the receiver at most
	// when the link is long (see tunnel.DialLanes); below 2, one.
	Lanes  int
	Level  zstd.EncoderLevel
	Source Source
}

// Source is what a sender sends: Files or StorePaths.
type Source interface{ isSource() }

// Files sends files and directory trees as `tar -h` sees them: a
// directory's contents at the top level, a file under its base name.
type Files struct {
	Paths []string
	// FollowAnySymlink follows symlinks wherever they lead; by default
	// only those that stay inside the path they are found under or lead
	// into /nix/store, and others are refused.
	FollowAnySymlink bool
}

// StorePaths sends store paths: the closure of Paths as NARs, for a
// receiver's Store, or with Files the paths' files, for its Dir.
type StorePaths struct {
	// Paths are the store paths; with Stdin they are read from standard
	// input instead, ahead of the pin line or after it, one a line up to
	// an empty line or EOF (so that standard input can still be the
	// lifeline, or carry the channel, after them).
	Paths []string
	Stdin bool
	Files bool
	// FollowAnySymlink, with Files: as for Files.
	FollowAnySymlink bool
	// SignKey, without Files: a Nix secret key file of this host to sign
	// each path with on the way. It is read here and stays here: only its
	// signatures travel.
	SignKey string
}

func (Files) isSource()      {}
func (StorePaths) isSource() {}

// Send runs the sending end: it prints its fingerprint line on Stdout,
// takes the receiver's pin, connects to the receiver (printing the
// connected line), and sends o.Source. The summary is the transfer's
// figures; an error that must not be retried is a protocol.Error with its
// exit status (ExitDialFailed: the receiver was never reached).
func Send(ctx context.Context, o SendOptions) (_ *protocol.Stream, err error) {
	defer func() { o.sayRefused(err) }()
	if err := o.checkMeet("send", "--connect", o.Connect); err != nil {
		return nil, err
	}
	switch src := o.Source.(type) {
	case Files:
		return o.sendFiles(ctx, src)
	case StorePaths:
		return o.sendStore(ctx, src)
	}
	return nil, usage("send: nothing to send")
}

func (o *SendOptions) sendFiles(ctx context.Context, f Files) (*protocol.Stream, error) {
	if len(f.Paths) == 0 {
		return nil, usage("send: no PATH to send")
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(o.Stdout, protocol.FingerprintLine(id.Pin()))
	// A path that is missing fails at once, before anything is dialled.
	src, err := transfer.List(f.Paths, transfer.CollectOptions{FollowAnySymlink: f.FollowAnySymlink})
	if err != nil {
		return nil, linkRefusal(fmt.Errorf("send: %w", err))
	}
	// The files are hashed while the pins are exchanged and the channel is
	// set up: the manifest is needed only once the receiver is ready. Not
	// before the pin is out: hashing takes every core, and the pin is what
	// the controller and the receiver wait for (rig, both ends started at
	// once: 20 ms sooner done with the pin first).
	cctx, stopHashing := context.WithCancel(ctx)
	defer stopHashing()
	hashed := make(chan struct{})
	var cerr error
	go func() {
		defer close(hashed)
		cerr = src.Hash(cctx)
	}()
	pin, err := peerPin(o.PeerPin, o.Stdin)
	if err != nil {
		return nil, err
	}
	if o.Lifeline && !o.Stdio {
		ctx = lifeline(ctx, o.Stdin)
	}
	// A file that cannot be read fails as soon as it is found out.
	select {
	case <-hashed:
		if cerr != nil {
			return nil, fmt.Errorf("send: %w", cerr)
		}
	default:
	}
	return o.stream(ctx, id, pin, o.Stdin, src, false, func() error {
		select {
		case <-hashed:
		case <-ctx.Done():
			return fmt.Errorf("send: %w", context.Cause(ctx))
		}
		if cerr != nil {
			return fmt.Errorf("send: %w", cerr)
		}
		return nil
	})
}

func (o *SendOptions) sendStore(ctx context.Context, sp StorePaths) (*protocol.Stream, error) {
	if !sp.Files {
		if err := nixstore.Look(); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
	}
	// The key first: a bad one fails before anything is read or dialled.
	var key *nixstore.SigningKey
	if sp.SignKey != "" {
		var err error
		if key, err = nixstore.LoadSigningKey(sp.SignKey); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
	}
	collect := func(paths []string) (*transfer.Source, error) {
		var src *transfer.Source
		var err error
		if sp.Files {
			src, err = transfer.CollectEach(ctx, paths, transfer.CollectOptions{FollowAnySymlink: sp.FollowAnySymlink})
		} else {
			src, err = transfer.CollectStore(ctx, &transfer.NixStore{}, paths)
		}
		if err != nil {
			return nil, linkRefusal(fmt.Errorf("send: %w", err))
		}
		if key != nil {
			src.Sign(key)
		}
		return src, nil
	}
	var src *transfer.Source
	if !sp.Stdin {
		paths, err := nixstore.CheckPaths(sp.Paths)
		if err != nil {
			return nil, usage("send: %v", err)
		}
		if len(paths) == 0 {
			return nil, usage("send: no store path to send")
		}
		if src, err = collect(paths); err != nil {
			return nil, err
		}
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return nil, err
	}
	fmt.Fprintln(o.Stdout, protocol.FingerprintLine(id.Pin()))
	// Buffered from here on: everything on stdin (the pin, paths, the
	// lifeline, or the channel itself with Stdio) is read through br.
	br := bufio.NewReader(o.Stdin)
	readPaths := func() ([]string, error) {
		paths, err := nixstore.ReadPaths(br, "standard input", true)
		if err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
		if len(paths) == 0 {
			return nil, usage("send: no store path on standard input")
		}
		return paths, nil
	}
	// The paths may come ahead of the pin (a store path starts with "/",
	// a pin line never does): the controller sends them at once, and the
	// store is asked for their closure while the receiver starts and its
	// pin travels. Either way the closure is known before anything is
	// dialled.
	var collected chan error
	if sp.Stdin && o.PeerPin == "-" {
		if b, err := br.Peek(1); err == nil && b[0] == '/' {
			paths, err := readPaths()
			if err != nil {
				return nil, err
			}
			collected = make(chan error, 1)
			go func() {
				var err error
				src, err = collect(paths)
				collected <- err
			}()
		}
	}
	pin, err := peerPin(o.PeerPin, br)
	if collected != nil {
		// A pin that failed waits for the store's answer too (quick), so
		// that the error is the first that happened.
		if cerr := <-collected; err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, err
	}
	if sp.Stdin && collected == nil {
		paths, err := readPaths()
		if err != nil {
			return nil, err
		}
		if src, err = collect(paths); err != nil {
			return nil, err
		}
	}
	if o.Lifeline && !o.Stdio {
		ctx = lifeline(ctx, br)
	}
	return o.stream(ctx, id, pin, br, src, !sp.Files, nil)
}

// stream connects to the receiver (reading the channel from stdin with
// Stdio), waits for ready (if any) and sends src.
func (o *SendOptions) stream(ctx context.Context, id *tunnel.Identity, pin string, stdin io.Reader, src *transfer.Source, paths bool, ready func() error) (*protocol.Stream, error) {
	conn, err := o.dial(ctx, id, pin, stdin)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if ready != nil {
		if err := ready(); err != nil {
			return nil, err
		}
	}
	ctx, watch, stopIdle := watchIdle(ctx, &o.Channel, conn, "send")
	defer stopIdle()

	cnt := new(transfer.Counters)
	stop := o.progress(cnt, paths)
	st, err := transfer.Send(ctx, conn, src, transfer.SendOptions{Level: o.Level, Progress: cnt})
	stop()
	if err != nil {
		return nil, Refusal(watch.explain(fmt.Errorf("send: %w", tunnel.ReadError(err, id))))
	}
	s := summary(st, conn, o.Stdio)
	return &s, nil
}

// dial opens the channel to the receiver: over stdin and Stdout with
// Stdio, else by dialling Connect (and printing the connected line).
func (o *SendOptions) dial(ctx context.Context, id *tunnel.Identity, pin string, stdin io.Reader) (*tunnel.Conn, error) {
	var conn *tunnel.Conn
	var err error
	if o.Stdio {
		conn, err = tunnel.ClientOver(ctx, tunnel.NewStdioConn(stdin, o.Stdout), id, pin)
	} else {
		dctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
		conn, err = tunnel.DialLanes(dctx, o.Connect, id, pin, tunnel.LaneOptions{Lanes: o.Lanes, LongRTT: tunnel.LongRTT})
		cancel()
		var de *tunnel.DialError
		if errors.As(err, &de) && ctx.Err() == nil {
			// Never reached the receiver: the controller may take the
			// SSH path. Any other failure (a pin mismatch above all) it
			// must not paper over.
			return nil, &protocol.Error{Code: protocol.ExitDialFailed, Err: fmt.Errorf("send: %w", err)}
		}
	}
	if err != nil {
		return nil, Refusal(fmt.Errorf("send: %w", err))
	}
	if !o.Stdio {
		fmt.Fprintln(o.Stdout, protocol.ConnectedLine(conn.RemoteAddr().String()))
	}
	return conn, nil
}

// linkRefusal gives a symlink the sender will not follow its hint and the
// refusal's exit status (sending again would not help).
func linkRefusal(err error) error {
	var le *transfer.LinkError
	if !errors.As(err, &le) {
		return err
	}
	return &protocol.Error{Code: protocol.ExitRefused, Err: err,
		Hint: fmt.Sprintf("copy what it points to into %s, or pass --follow-any-symlink to send it anyway", le.Tree)}
}
