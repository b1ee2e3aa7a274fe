package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/staging"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

func init() {
	register(command{name: "recv", plumbing: true, summary: "receive files on the PXE host (the listening end of the channel)", run: cmdRecv})
}

func cmdRecv(ctx context.Context, e *env, args []string) error {
	limitMemory(e)
	fs := newFlagSet(e, "recv", "(--listen ADDR | --stdio) (--dest DIR | --pxe-dir DIR | --store) --peer-pin PIN|- [flags]")
	listen := fs.String("listen", "", "`HOST:PORT` to listen on (port 0 picks a free one, printed on the second line)")
	stdio := fs.Bool("stdio", false, "carry the TLS channel on standard input and output instead of TCP")
	dest := fs.String("dest", "", "`DIR` to land the files in; it must not exist or be empty")
	replace := fs.Bool("replace", false, "replace a non-empty --dest atomically")
	publish := fs.String("pxe-dir", "", "publish a netboot image as a new generation of slot hydra-INSTANCE in this pxeDir `DIR` (instead of --dest)")
	fs.StringVar(publish, "publish", "", "the old name of --pxe-dir")
	fs.MarkHidden("publish")
	instance := fs.String("instance", "", "instance type of the slot, with --pxe-dir")
	system := fs.String("system", "", "system of an instance type nbship does not know (aarch64-linux or x86_64-linux), with --pxe-dir")
	keep := fs.Int("keep", image.DefaultKeep, "generations to keep, with --pxe-dir")
	store := fs.Bool("store", false, "import the Nix store paths a relay --store sends into this host's store (instead of --dest)")
	substitute := fs.Bool("substitute", false, "with --store: first get the paths this host lacks from its own substituters (nix.conf), and want only the rest")
	pinFlag := fs.String("peer-pin", "", "the relay's `PIN` (SHA256:...), or - to read its fingerprint line from standard input")
	asJSON := fs.Bool("json", false, "print a JSON summary (on stdout; on stderr with --stdio)")
	wait := fs.Duration("accept-timeout", 2*time.Minute, "how long to wait for the pinned relay to connect")
	idle := addIdleFlag(fs)
	keepPartial := fs.Bool("keep-partial", false, "on failure, leave what arrived for a retry to reuse (set by the controller)")
	fs.MarkHidden("keep-partial")
	life := fs.Bool("stdin-lifeline", false, "stop when standard input closes (set by the controller)")
	fs.MarkHidden("stdin-lifeline")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("recv: unexpected argument %q", fs.Arg(0))
	}
	if *pinFlag == "" {
		// Before anything is printed: the controller reads the first
		// line as this end's pin.
		return usageError("recv: --peer-pin is required: the other end's fingerprint line, or - to read it from standard input")
	}
	if (*listen == "") == !*stdio {
		return usageError("recv: give exactly one of --listen ADDR or --stdio")
	}
	if *substitute && !*store {
		return usageError("recv: --substitute goes with --store")
	}
	var land target
	var err error
	switch {
	case *store && (*dest != "" || *publish != ""):
		return usageError("recv: give exactly one of --dest DIR, --pxe-dir DIR or --store")
	case *store:
		// Before anything else: a receiver without Nix fails before any
		// data moves.
		if err := nixstore.Look(); err != nil {
			return fmt.Errorf("recv: %w", err)
		}
	case (*dest == "") == (*publish == ""):
		return usageError("recv: give exactly one of --dest DIR or --pxe-dir DIR")
	case *dest != "":
		land, err = prepareLanding(e, *dest, *replace)
	default:
		land, err = prepareSlot(ctx, e, *publish, *instance, *system, *keep, *keepPartial)
	}
	if err != nil {
		return err
	}
	var ssink *transfer.StoreSink
	if *store {
		// Nix's import starts while the relay connects.
		ssink = transfer.NewStoreSink(&transfer.NixStore{})
		ssink.Substitute = *substitute
		ssink.Notify = func(msg string) { fmt.Fprintf(e.stderr, "nbship: recv: %s\n", msg) }
		ssink.Prepare(ctx)
		defer ssink.Close()
	}
	id, err := tunnel.NewIdentity()
	if err != nil {
		return err
	}
	var ln net.Listener
	if !*stdio {
		lctx, cancel := context.WithTimeout(ctx, *wait)
		ln, err = tunnel.Listen(lctx, *listen, func() {
			fmt.Fprintf(e.stderr, "nbship: recv: %s is in use (another transfer to this host?); waiting up to %v for it\n", *listen, *wait)
		})
		cancel()
		if err != nil {
			return withHint(fmt.Errorf("recv: %w", err), "pick another port (opensslPort) or stop what is using it")
		}
		defer ln.Close()
	}
	fmt.Fprintln(e.stdout, protocol.FingerprintLine(id.Pin()))
	if ln != nil {
		fmt.Fprintln(e.stdout, protocol.ListeningLine(ln.Addr().String()))
	}
	pin, err := peerPin(*pinFlag, e.stdin)
	if err != nil {
		return err
	}
	if *life && !*stdio {
		ctx = lifeline(ctx, e.stdin)
	}

	var conn *tunnel.Conn
	if *stdio {
		conn, err = tunnel.ServerOver(ctx, tunnel.NewStdioConn(e.stdin, e.stdout), id, pin)
		if err != nil {
			return fmt.Errorf("recv: %w", err)
		}
	} else {
		actx, cancel := context.WithTimeoutCause(ctx, *wait, errors.New("no relay connected in time"))
		defer cancel()
		conn, err = tunnel.Accept(actx, ln, id, pin, func(err error) {
			fmt.Fprintf(e.stderr, "nbship: recv: %v\n", err)
		})
		if err != nil {
			return withHint(fmt.Errorf("recv: %w", err), "check that the relay can reach %s and was given this receiver's fingerprint", ln.Addr())
		}
		ln.Close()
	}
	defer conn.Close()
	ctx, explain, stopIdle := watchIdle(ctx, e, conn, *idle, "recv")
	defer stopIdle()
	out := e.stdout
	if *stdio || !*asJSON {
		out = e.stderr
	}
	if *store {
		return refusal(explain(recvStore(ctx, e, conn, ssink, out, *asJSON)))
	}

	stage, have, err := land.stage()
	if err != nil {
		return err
	}
	defer land.cleanup()
	atForcedExit(land.cleanup)
	sink, err := transfer.NewDirSink(stage, have)
	if err != nil {
		return err
	}
	defer sink.Close()
	if t, ok := land.(*slotTarget); ok {
		// Resume (issue 21): keep the file in progress for a retry, and
		// continue the ones failed attempts kept.
		dirs, _ := t.slot.LeftoverDirs()
		sink.Resume(t.keepPartial, dirs)
	}
	cnt := new(transfer.Counters)
	stop := progress(e, "recv", cnt, false)
	st, err := transfer.Receive(ctx, conn, sink, transfer.ReceiveOptions{Progress: cnt, Commit: land.commit})
	stop()
	if err != nil {
		return refusal(explain(fmt.Errorf("recv: %w", err)))
	}
	sum := newSummary(st, conn.WireBytes())
	if t, ok := land.(*slotTarget); ok {
		sum.Generation, sum.Previous = t.gen.Name, t.gen.Previous
	}
	printSummary(out, *asJSON, "received", sum)
	return nil
}

// recvStore imports the store paths of the stream into this host's store.
func recvStore(ctx context.Context, e *env, conn *tunnel.Conn, sink *transfer.StoreSink, out io.Writer, asJSON bool) error {
	cnt := new(transfer.Counters)
	stop := progress(e, "recv", cnt, true)
	st, err := transfer.Receive(ctx, conn, sink, transfer.ReceiveOptions{
		Progress: cnt,
		Commit:   func() (string, error) { return "", sink.Confirm(ctx) },
	})
	stop()
	if cerr := sink.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return refusal(fmt.Errorf("recv: %w", err))
	}
	sum := newSummary(st, conn.WireBytes())
	sum.Substituted, sum.SubstitutedBytes = sink.Substituted()
	printStoreSummary(out, asJSON, "imported", sum)
	return nil
}

// target is where a receiver puts a verified tree.
type target interface {
	// stage makes the empty directory to receive into, and says which
	// files (by SHA-256) are already at hand and need not be sent.
	stage() (dir string, have func([32]byte) (string, bool), err error)
	// commit puts the verified tree in place and names where it went.
	commit() (string, error)
	// cleanup removes what is left after a failure (or a replaced tree).
	cleanup()
}

// landing puts a received tree at dest atomically: it is written into a
// temporary directory beside dest and renamed into place only when every
// file is verified. The temporary directory is locked while this receiver
// lives (internal/staging, as image slots do): one a killed receiver left
// is unlocked, and the next receiver for dest removes it.
type landing struct {
	dest    string
	replace bool
	tmp     string
	old     string
	held    *staging.Dir
}

// The temporary directories beside dest: .DEST.nbship-recv-* while
// locked, .DEST.nbship-new-* for the instant before.
func landingPrefixes(dest string) (creating, prefix string) {
	base := "." + filepath.Base(dest) + ".nbship-"
	return base + "new-", base + "recv-"
}

func prepareLanding(e *env, dest string, replace bool) (*landing, error) {
	dest = filepath.Clean(dest)
	parent := filepath.Dir(dest)
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return nil, withHint(fmt.Errorf("recv: parent directory of %s does not exist", dest), "create %s first", parent)
	}
	if err := checkDest(dest, replace); err != nil {
		return nil, err
	}
	creating, prefix := landingPrefixes(dest)
	for _, p := range staging.Sweep(parent, creating, prefix) {
		fmt.Fprintf(e.stderr, "nbship: recv: removed %s, left by a receiver that did not finish\n", p)
	}
	return &landing{dest: dest, replace: replace}, nil
}

func checkDest(dest string, replace bool) error {
	fi, err := os.Lstat(dest)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("recv: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("recv: %s exists and is not a directory; remove it or choose another --dest", dest)
	}
	ents, err := os.ReadDir(dest)
	if err != nil {
		return fmt.Errorf("recv: %w", err)
	}
	if len(ents) > 0 && !replace {
		return withHint(fmt.Errorf("recv: %s is not empty", dest), "pass --replace to swap it atomically for the new files")
	}
	return nil
}

func (l *landing) stage() (string, func([32]byte) (string, bool), error) {
	creating, prefix := landingPrefixes(l.dest)
	d, err := staging.Make(filepath.Dir(l.dest), creating, prefix)
	if err != nil {
		return "", nil, fmt.Errorf("recv: %w", err)
	}
	if err := os.Chmod(d.Path, 0o755); err != nil {
		d.Release()
		os.Remove(d.Path)
		return "", nil, fmt.Errorf("recv: %w", err)
	}
	l.tmp, l.held = d.Path, d
	return d.Path, nil, nil
}

// commit moves the verified tree into place: a rename when dest is absent
// or empty, an atomic exchange with --replace.
func (l *landing) commit() (string, error) {
	if err := checkDest(l.dest, l.replace); err != nil {
		return "", err
	}
	fi, err := os.Lstat(l.dest)
	switch {
	case errors.Is(err, os.ErrNotExist):
		err = os.Rename(l.tmp, l.dest)
	case err == nil && fi.IsDir():
		if ents, _ := os.ReadDir(l.dest); len(ents) == 0 {
			os.Remove(l.dest)
			err = os.Rename(l.tmp, l.dest)
		} else {
			err = unix.Renameat2(unix.AT_FDCWD, l.tmp, unix.AT_FDCWD, l.dest, unix.RENAME_EXCHANGE)
			if err == nil {
				l.old = l.tmp // now holds the previous contents
			}
		}
	}
	if err != nil {
		return "", fmt.Errorf("recv: putting the files in place at %s: %w", l.dest, err)
	}
	if l.old == "" {
		l.tmp = ""
	}
	return l.dest, nil
}

// cleanup removes the temporary directory (unverified data, or the
// replaced old contents).
func (l *landing) cleanup() {
	if l.tmp != "" {
		os.RemoveAll(l.tmp)
	}
	if l.held != nil {
		l.held.Release()
	}
}

// slotTarget publishes into an image slot: staged in the slot's
// generations directory, verified against the instance's profile (kernel
// architecture, initrd format, netboot.ipxe), then switched to with one
// rename. Files the current generation has are hard-linked, not sent.
type slotTarget struct {
	ctx    context.Context
	e      *env
	slot   *image.Slot
	keep   int
	staged string
	done   bool
	gen    image.Generation // what commit published
	// keepPartial leaves a failed attempt's files for the next one.
	keepPartial bool
}

func prepareSlot(ctx context.Context, e *env, pxeDir, instance, system string, keep int, keepPartial bool) (*slotTarget, error) {
	if instance == "" {
		return nil, usageError("recv: --pxe-dir needs --instance NAME")
	}
	var extra []image.Profile
	if system != "" {
		p, err := image.ForSystem(instance, system)
		if err != nil {
			return nil, usageError("recv: %v", err)
		}
		extra = append(extra, p)
	}
	prof, err := image.Lookup(instance, extra)
	if err != nil {
		return nil, usageError("recv: %v", err)
	}
	if fi, err := os.Stat(pxeDir); err != nil || !fi.IsDir() {
		return nil, withHint(fmt.Errorf("recv: pxeDir %s is not a directory", pxeDir), "create it, or fix pxeDir in the config")
	}
	slot, err := image.OpenSlot(pxeDir, prof)
	if err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	slot.Logf = func(format string, a ...any) { fmt.Fprintf(e.stderr, "nbship: recv: "+format+"\n", a...) }
	return &slotTarget{ctx: ctx, e: e, slot: slot, keep: keep, keepPartial: keepPartial}, nil
}

func (t *slotTarget) stage() (string, func([32]byte) (string, bool), error) {
	dir, err := t.slot.Stage()
	if err != nil {
		return "", nil, fmt.Errorf("recv: %w", err)
	}
	t.staged = dir
	have, err := t.slot.Have()
	if err == nil {
		// And what an earlier, failed attempt already received.
		err = t.slot.Leftovers(have)
	}
	if err != nil {
		// Not fatal: everything is sent instead.
		fmt.Fprintf(t.e.stderr, "nbship: recv: not reusing files already here: %v\n", err)
		return dir, nil, nil
	}
	return dir, func(sum [32]byte) (string, bool) {
		p, ok := have[sum]
		return p, ok
	}, nil
}

func (t *slotTarget) commit() (string, error) {
	t.done = true // Publish consumes the staged directory either way
	g, err := t.slot.Publish(t.ctx, t.staged, t.keep)
	if err != nil {
		return "", err // cmdRecv says "recv: "
	}
	t.gen = g
	fmt.Fprintf(t.e.stderr, "nbship: recv: published %s as generation %s\n", t.slot.Path(), g.Name)
	return t.slot.Path(), nil
}

func (t *slotTarget) cleanup() {
	if t.staged == "" || t.done {
		return
	}
	if t.keepPartial {
		t.slot.Release(t.staged)
		return
	}
	t.slot.Discard(t.staged)
}
