package ends

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/staging"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/transfer"
)

// Dir lands the files at Path atomically: they are written into a
// temporary directory beside it and renamed into place only when every
// file is verified. Path must not exist or be empty, unless Replace: then
// a non-empty one is swapped for the new files in one exchange.
type Dir struct {
	Path    string
	Replace bool
}

// Slot publishes a netboot image as a new generation of the slot
// hydra-Instance in PXEDir: staged in the slot's generations directory,
// verified against the instance's profile (kernel architecture, initrd
// format, netboot.ipxe), then switched to with one rename. Files the
// current generation has are hard-linked, not sent.
type Slot struct {
	PXEDir   string
	Instance string
	System   string // of an instance type nbship does not know
	Keep     int    // generations to keep
	// KeepPartial leaves a failed attempt's files for the next one.
	KeepPartial bool
}

// Store imports the stream's store paths into this host's Nix store.
type Store struct {
	// Substitute first gets the paths this host lacks from its own
	// substituters (nix.conf), and wants only the rest.
	Substitute bool
	// KeepPartial keeps the start of a big NAR a failed attempt was
	// receiving, under TMPDIR, for the next one (transfer.StoreSink.Resume).
	KeepPartial bool
}

// landing is a prepared Dir. Its temporary directory is locked while the
// receiver lives (internal/staging, as image slots do): one a killed
// receiver left is unlocked, and the next receiver for the same Path
// removes it.
type landing struct {
	dest    string
	replace bool
	tmp     string
	old     string
	held    *staging.Dir
	dirSink
}

// The temporary directories beside dest: .DEST.nbship-recv-* while
// locked, .DEST.nbship-new-* for the instant before.
func landingPrefixes(dest string) (creating, prefix string) {
	base := "." + filepath.Base(dest) + ".nbship-"
	return base + "new-", base + "recv-"
}

func (d Dir) prepare(_ context.Context, c *Channel) (target, error) {
	dest := filepath.Clean(d.Path)
	parent := filepath.Dir(dest)
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return nil, hint(fmt.Errorf("recv: parent directory of %s does not exist", dest), "create %s first", parent)
	}
	if err := checkDest(dest, d.Replace); err != nil {
		return nil, err
	}
	creating, prefix := landingPrefixes(dest)
	for _, p := range staging.Sweep(parent, creating, prefix) {
		c.logf("recv", "removed %s, left by a receiver that did not finish", p)
	}
	return &landing{dest: dest, replace: d.Replace}, nil
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
		return hint(fmt.Errorf("recv: %s is not empty", dest), "pass --replace to swap it atomically for the new files")
	}
	return nil
}

func (l *landing) stage(context.Context) (transfer.Sink, error) {
	creating, prefix := landingPrefixes(l.dest)
	d, err := staging.Make(filepath.Dir(l.dest), creating, prefix)
	if err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	if err := os.Chmod(d.Path, 0o755); err != nil {
		d.Release()
		os.Remove(d.Path)
		return nil, fmt.Errorf("recv: %w", err)
	}
	l.tmp, l.held = d.Path, d
	l.sink, err = transfer.NewDirSink(d.Path, nil)
	return l.sink, err
}

// commit moves the verified tree into place: a rename when dest is absent
// or empty, an atomic exchange with Replace.
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

// dirSink is the sink of a target that receives into a directory.
type dirSink struct{ sink *transfer.DirSink }

// close closes the sink once. Its error is not the transfer's: every
// file was synced and checked before the commit.
func (d *dirSink) close() error {
	if d.sink != nil {
		d.sink.Close()
		d.sink = nil
	}
	return nil
}

func (l *landing) report(*protocol.Stream) {}

// slotTarget is a prepared Slot.
type slotTarget struct {
	ctx    context.Context
	c      *Channel
	slot   *image.Slot
	keep   int
	staged string
	done   bool
	gen    image.Generation // what commit published
	dirSink
	// keepPartial leaves a failed attempt's files for the next one.
	keepPartial bool
}

func (s Slot) prepare(ctx context.Context, c *Channel) (target, error) {
	if s.Instance == "" {
		return nil, usage("recv: --pxe-dir needs --instance NAME")
	}
	var extra []image.Profile
	if s.System != "" {
		p, err := image.ForSystem(s.Instance, s.System)
		if err != nil {
			return nil, usage("recv: %v", err)
		}
		extra = append(extra, p)
	}
	prof, err := image.Lookup(s.Instance, extra)
	if err != nil {
		return nil, usage("recv: %v", err)
	}
	if fi, err := os.Stat(s.PXEDir); err != nil || !fi.IsDir() {
		return nil, hint(fmt.Errorf("recv: pxeDir %s is not a directory", s.PXEDir), "create it, or fix pxeDir in the config")
	}
	slot, err := image.OpenSlot(s.PXEDir, prof)
	if err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	slot.Logf = func(format string, a ...any) { c.logf("recv", format, a...) }
	return &slotTarget{ctx: ctx, c: c, slot: slot, keep: s.Keep, keepPartial: s.KeepPartial}, nil
}

func (t *slotTarget) stage(context.Context) (transfer.Sink, error) {
	dir, err := t.slot.Stage()
	if err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	t.staged = dir
	have, err := t.slot.Have()
	if err == nil {
		// And what an earlier, failed attempt already received.
		err = t.slot.Leftovers(have)
	}
	var reuse func([32]byte) (string, bool)
	if err != nil {
		// Not fatal: everything is sent instead.
		t.c.logf("recv", "not reusing files already here: %v", err)
	} else {
		reuse = func(sum [32]byte) (string, bool) {
			p, ok := have[sum]
			return p, ok
		}
	}
	sink, err := transfer.NewDirSink(dir, reuse)
	if err != nil {
		return nil, err
	}
	// Keep the file in progress for a retry, and continue the ones
	// failed attempts kept (resume).
	dirs, _ := t.slot.LeftoverDirs()
	sink.Resume(t.keepPartial, dirs)
	t.sink = sink
	return sink, nil
}

// commit publishes under the context the slot was opened with: once the
// image is verified, neither the idle watch nor the lifeline stops it.
func (t *slotTarget) commit() (string, error) {
	t.done = true // Publish consumes the staged directory either way
	g, err := t.slot.Publish(t.ctx, t.staged, t.keep)
	if err != nil {
		return "", err // Receive says "recv: "
	}
	t.gen = g
	t.c.logf("recv", "published %s as generation %s", t.slot.Path(), g.Name)
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

func (t *slotTarget) report(s *protocol.Stream) {
	s.Generation, s.Previous = t.gen.Name, t.gen.Previous
}

// storeTarget is a prepared Store: Nix's import starts while the sender
// connects, and the commit is the sink's Confirm.
type storeTarget struct {
	sink *transfer.StoreSink
	ctx  context.Context
}

func (s Store) prepare(ctx context.Context, c *Channel) (target, error) {
	// Before anything else: a receiver without Nix fails before any data
	// moves.
	if err := nixstore.Look(); err != nil {
		return nil, fmt.Errorf("recv: %w", err)
	}
	sink := transfer.NewStoreSink(&transfer.NixStore{})
	sink.Substitute = s.Substitute
	sink.Notify = func(msg string) { c.logf("recv", "%s", msg) }
	// Every receiver continues what failed attempts kept, and removes it
	// unless it keeps too and fails.
	if err := sink.Resume(s.KeepPartial, os.TempDir()); err != nil {
		c.logf("recv", "%v; a retry will send that NAR whole", err)
	}
	sink.Prepare(ctx)
	return &storeTarget{sink: sink}, nil
}

func (t *storeTarget) stage(ctx context.Context) (transfer.Sink, error) {
	t.ctx = ctx
	return t.sink, nil
}

func (t *storeTarget) commit() (string, error) { return "", t.sink.Confirm(t.ctx) }

// cleanup has nothing to remove: what Nix did not confirm is not valid.
func (t *storeTarget) cleanup() {}

func (t *storeTarget) close() error { return t.sink.Close() }

func (t *storeTarget) report(s *protocol.Stream) {
	s.Substituted, s.SubstitutedBytes = t.sink.Substituted()
}
