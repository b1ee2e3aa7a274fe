package main

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

func init() {
	register(command{name: "relay", plumbing: true, summary: "send files from the build host (the dialling end of the channel)", run: cmdRelay})
}

func cmdRelay(ctx context.Context, e *env, args []string) error {
	limitMemory(e)
	fs := newFlagSet(e, "relay", "(--connect ADDR | --stdio) --peer-pin PIN|- [--store | --store-files] [flags] PATH...")
	connect := fs.String("connect", "", "the receiver's `HOST:PORT`")
	stdio := fs.Bool("stdio", false, "carry the TLS channel on standard input and output instead of TCP")
	pinFlag := fs.String("peer-pin", "", "the receiver's `PIN` (SHA256:...), or - to read its fingerprint line from standard input")
	level := fs.String("level", "auto", "zstd `LEVEL`: auto (better on a link much slower than the compressor), fastest, default or better")
	asJSON := fs.Bool("json", false, "print a JSON summary (on stdout; on stderr with --stdio)")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "how long to keep trying to reach the receiver")
	store := fs.Bool("store", false, "send the closure of the store PATHs as Nix store paths, for recv --store (no PATH or -: one per line on standard input, after the pin line, up to an empty line)")
	signKey := fs.String("sign-key", "", "with --store: sign each path on the way with this Nix secret key `file` of this host, as nix store sign would (the store is left as it is)")
	storeFiles := fs.Bool("store-files", false, "send the files of the store PATHs, each as a top-level entry named by its base name, for recv --dest (PATHs as with --store)")
	anyLink := fs.Bool("follow-any-symlink", false, "follow symlinks wherever they lead (default: only those that stay inside the PATH they are found under or lead into /nix/store; others are refused)")
	idle := addIdleFlag(fs)
	life := fs.Bool("stdin-lifeline", false, "stop when standard input closes (set by the controller)")
	fs.MarkHidden("stdin-lifeline")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *pinFlag == "" {
		// Before anything is printed: the controller reads the first
		// line as this end's pin.
		return usageError("relay: --peer-pin is required: the other end's fingerprint line, or - to read it from standard input")
	}
	if (*connect == "") == !*stdio {
		return usageError("relay: give exactly one of --connect ADDR or --stdio")
	}
	lvl, err := transfer.EncoderLevel(*level)
	if err != nil {
		return usageError("relay: %v", err)
	}
	if *store || *storeFiles {
		if *store && *storeFiles {
			return usageError("relay: give at most one of --store and --store-files")
		}
		if *signKey != "" && !*store {
			return usageError("relay: --sign-key goes with --store")
		}
		return relayStore(ctx, e, relayOptions{
			connect: *connect, stdio: *stdio, pin: *pinFlag, level: lvl, asJSON: *asJSON,
			dialTimeout: *dialTimeout, lifeline: *life, files: *storeFiles, idle: *idle, signKey: *signKey,
			links: transfer.CollectOptions{FollowAnySymlink: *anyLink},
		}, fs.Args())
	}
	if *signKey != "" {
		return usageError("relay: --sign-key goes with --store")
	}
	if fs.NArg() == 0 {
		return usageError("relay: no PATH to send")
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, protocol.FingerprintLine(id.Pin()))
	// A path that is missing fails at once, before anything is dialled.
	src, err := transfer.List(fs.Args(), transfer.CollectOptions{FollowAnySymlink: *anyLink})
	if err != nil {
		return linkRefusal(fmt.Errorf("relay: %w", err))
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
	pin, err := peerPin(*pinFlag, e.stdin)
	if err != nil {
		return err
	}
	if *life && !*stdio {
		ctx = lifeline(ctx, e.stdin)
	}
	// A file that cannot be read fails as soon as it is found out.
	select {
	case <-hashed:
		if cerr != nil {
			return fmt.Errorf("relay: %w", cerr)
		}
	default:
	}
	conn, err := relayDial(ctx, e, *stdio, *connect, *dialTimeout, id, pin, e.stdin)
	if err != nil {
		return err
	}
	defer conn.Close()
	select {
	case <-hashed:
	case <-ctx.Done():
		return fmt.Errorf("relay: %w", context.Cause(ctx))
	}
	if cerr != nil {
		return fmt.Errorf("relay: %w", cerr)
	}
	ctx, explain, stopIdle := watchIdle(ctx, e, conn, *idle, "relay")
	defer stopIdle()

	cnt := new(transfer.Counters)
	stop := progress(e, "relay", cnt, false)
	st, err := transfer.Send(ctx, conn, src, transfer.SendOptions{Level: lvl, Progress: cnt})
	stop()
	if err != nil {
		return refusal(explain(fmt.Errorf("relay: %w", tunnel.ReadError(err, id))))
	}
	out := e.stdout
	if *stdio || !*asJSON {
		out = e.stderr
	}
	printSummary(out, *asJSON, "sent", newSummary(st, conn.WireBytes()))
	return nil
}

// relayDial opens the channel to the receiver: over stdin and stdout with
// stdio, else by dialling connect (and printing "connected ADDR").
func relayDial(ctx context.Context, e *env, stdio bool, connect string, dialTimeout time.Duration, id *tunnel.Identity, pin string, stdin io.Reader) (*tunnel.Conn, error) {
	var conn *tunnel.Conn
	var err error
	if stdio {
		conn, err = tunnel.ClientOver(ctx, tunnel.NewStdioConn(stdin, e.stdout), id, pin)
	} else {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		conn, err = tunnel.Dial(dctx, connect, id, pin)
		cancel()
		var de *tunnel.DialError
		if errors.As(err, &de) && ctx.Err() == nil {
			// Never reached the receiver: the controller may take the
			// SSH path. Any other failure (a pin mismatch above all) it
			// must not paper over.
			return nil, &exitError{code: protocol.ExitDialFailed, err: fmt.Errorf("relay: %w", err)}
		}
	}
	if err != nil {
		return nil, refusal(fmt.Errorf("relay: %w", err))
	}
	if !stdio {
		fmt.Fprintln(e.stdout, protocol.ConnectedLine(conn.RemoteAddr().String()))
	}
	return conn, nil
}

type relayOptions struct {
	connect     string
	stdio       bool
	pin         string
	level       zstd.EncoderLevel
	asJSON      bool
	dialTimeout time.Duration
	lifeline    bool
	files       bool // --store-files: the paths' files, not their NARs
	idle        time.Duration
	signKey     string // --sign-key: a Nix secret key file of this host
	links       transfer.CollectOptions
}

// linkRefusal gives a symlink the relay will not follow its hint and the
// refusal's exit status (sending again would not help).
func linkRefusal(err error) error {
	var le *transfer.LinkError
	if !errors.As(err, &le) {
		return err
	}
	return &exitError{code: protocol.ExitRefused, err: withHint(err, "copy what it points to into %s, or pass --follow-any-symlink to send it anyway", le.Tree)}
}

// relayStore sends store paths: their closure as NARs (--store), or their
// files (--store-files). The paths are the arguments, or, with none or -,
// lines of standard input after the pin line up to an empty line or EOF
// (so stdin can still be the lifeline, or carry the channel, after them).
func relayStore(ctx context.Context, e *env, o relayOptions, args []string) error {
	if !o.files {
		if err := nixstore.Look(); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
	}
	// The key first: a bad one fails before anything is read or dialled.
	// It is read here and stays here: only its signatures travel.
	var key *nixstore.SigningKey
	if o.signKey != "" {
		var err error
		if key, err = nixstore.LoadSigningKey(o.signKey); err != nil {
			return fmt.Errorf("relay: %w", err)
		}
	}
	fromStdin := len(args) == 0 || len(args) == 1 && args[0] == "-"
	collect := func(paths []string) (*transfer.Source, error) {
		var src *transfer.Source
		var err error
		if o.files {
			src, err = transfer.CollectEach(ctx, paths, o.links)
		} else {
			src, err = transfer.CollectStore(ctx, &transfer.NixStore{}, paths)
		}
		if err != nil {
			return nil, linkRefusal(fmt.Errorf("relay: %w", err))
		}
		if key != nil {
			src.Sign(key)
		}
		return src, nil
	}
	var src *transfer.Source
	if !fromStdin {
		paths, err := storePathArgs(args)
		if err != nil {
			return usageError("relay: %v", err)
		}
		if src, err = collect(paths); err != nil {
			return err
		}
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, protocol.FingerprintLine(id.Pin()))
	// Buffered from here on: everything after the pin (paths, the lifeline,
	// or the channel itself with --stdio) is read through br.
	br := bufio.NewReader(e.stdin)
	pin, err := peerPin(o.pin, br)
	if err != nil {
		return err
	}
	if fromStdin {
		paths, err := readStorePaths(br, "standard input", true)
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		if len(paths) == 0 {
			return usageError("relay: no store path on standard input")
		}
		if src, err = collect(paths); err != nil {
			return err
		}
	}
	if o.lifeline && !o.stdio {
		ctx = lifeline(ctx, br)
	}
	conn, err := relayDial(ctx, e, o.stdio, o.connect, o.dialTimeout, id, pin, br)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, explain, stopIdle := watchIdle(ctx, e, conn, o.idle, "relay")
	defer stopIdle()

	cnt := new(transfer.Counters)
	var stop func()
	if o.files {
		stop = progress(e, "relay", cnt, false)
	} else {
		stop = progress(e, "relay", cnt, true)
	}
	st, err := transfer.Send(ctx, conn, src, transfer.SendOptions{Level: o.level, Progress: cnt})
	stop()
	if err != nil {
		return refusal(explain(fmt.Errorf("relay: %w", tunnel.ReadError(err, id))))
	}
	out := e.stdout
	if o.stdio || !o.asJSON {
		out = e.stderr
	}
	if o.files {
		printSummary(out, o.asJSON, "sent", newSummary(st, conn.WireBytes()))
	} else {
		printStoreSummary(out, o.asJSON, "sent", newSummary(st, conn.WireBytes()))
	}
	return nil
}
