// Package nixstore is the Nix store as nbship's stream needs it: store path
// names and NAR hashes, nix-store --serve sessions (Nix's serve protocol)
// that dump NARs and import them, the order store paths go in, and
// signatures, content addresses and what a store trusts. Package transfer
// carries the paths between hosts.
package nixstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/tail"
)

// Store is the local Nix store through Nix 2.8's nix-store command:
// --serve (the sender's Session), --serve --write (the Importer) and
// --check-validity (the import confirmed).
type Store struct {
	Env []string // nix-store's environment; nil: this process's
}

// install is what to do about a host without nix-store.
const install = "install Nix there (Debian: apt-get install nix-bin)"

// ErrNotFound is a host without nix-store on its PATH.
var ErrNotFound = errors.New("nix-store is not on this host's PATH; " + install)

// NotFoundError is ErrNotFound on a host named in the message (another
// host, or the local one as the controller calls it).
type NotFoundError struct {
	Host string
}

func (e *NotFoundError) Error() string {
	return e.Host + " has no nix-store on its PATH; " + install
}

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// NotFound reports whether a command run through a shell failed for want
// of nix-store: exit status 127, or the shell saying so on stderr.
func NotFound(status int, stderr string) bool {
	return status == 127 || strings.Contains(stderr, "nix-store: not found") || strings.Contains(stderr, "nix-store: command not found")
}

// Look reports ErrNotFound when nix-store cannot be run here.
func Look() error {
	if _, err := exec.LookPath("nix-store"); err != nil {
		return ErrNotFound
	}
	return nil
}

// argBatch is how many store paths go on one nix-store command line
// (about 100 KB of arguments, far below the kernel's limit).
const argBatch = 1000

func batches(paths []string) [][]string {
	var b [][]string
	for len(paths) > argBatch {
		b = append(b, paths[:argBatch])
		paths = paths[argBatch:]
	}
	if len(paths) > 0 {
		b = append(b, paths)
	}
	return b
}

func (n *Store) command(ctx context.Context, args ...string) (*exec.Cmd, *tail.Buffer) {
	cmd := exec.CommandContext(ctx, "nix-store", args...)
	cmd.Env = n.Env
	t := &tail.Buffer{}
	cmd.Stderr = t
	return cmd, t
}

// output runs nix-store and returns its stdout lines.
func (n *Store) output(ctx context.Context, args ...string) ([]string, error) {
	cmd, t := n.command(ctx, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, nixErr(args[0], err, t)
	}
	return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n"), nil
}

func nixErr(op string, err error, t *tail.Buffer) error {
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("nixstore: %w", ErrNotFound)
	}
	if l := t.Last(); l != "" {
		return fmt.Errorf("nixstore: nix-store %s: %s", op, l)
	}
	return fmt.Errorf("nixstore: nix-store %s: %w", op, err)
}

// Dump starts the session: one nix-store --serve (no --write: it can only
// read), greeted; it answers the closure and metadata queries, then is
// given one cmdDumpStorePath per path asked for: a closure of a thousand
// paths costs one process start, not one per query and per path (60-100 ms
// each here, and the stream waited for each). The
// commands are written as nix-store reads them, so it starts on the next
// path as soon as it has written the last one's NAR. (nix-store --dump
// would read the file system under /nix/store, not the store, which need
// not be there.)
func (n *Store) Dump(ctx context.Context) (*Session, error) {
	cmd, t := n.command(ctx, "--serve")
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	// nix-store runs ahead of the reader by what the pipe holds: a path of
	// small files comes out of it unevenly, and the encoder should not wait
	// for each. (Refused beyond /proc/sys/fs/pipe-max-size: the default
	// 64 KiB stays.)
	if rc, err := out.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, dumpPipe) })
	}
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		return nil, nixErr("--serve", err, t)
	}
	d := &Session{cmd: cmd, in: in, out: out, t: t}
	if err := Greet(struct {
		io.Reader
		io.Writer
	}{out, in}); err != nil {
		// Its input closed, a nix-store still running exits; one that
		// failed says why.
		in.Close()
		werr := d.wait()
		out.Close()
		if werr != nil {
			return nil, werr
		}
		return nil, fmt.Errorf("nixstore: nix-store --serve: %w", err)
	}
	return d, nil
}

// Closure asks nix-store for the closure of paths; before Request only.
func (d *Session) Closure(paths []string) ([]string, error) {
	b := binary.LittleEndian.AppendUint64(nil, cmdQueryClosure)
	b = binary.LittleEndian.AppendUint64(b, 0) // not the outputs of derivations
	b = appendSet(b, paths)
	if _, err := d.in.Write(b); err != nil {
		return nil, d.fail("closure", err)
	}
	closure, err := readSet(d.out)
	if err != nil {
		return nil, d.fail("closure", err)
	}
	return closure, nil
}

// Info asks nix-store for the metadata of paths; before Request only.
func (d *Session) Info(paths []string) (map[string]*PathInfo, error) {
	b := binary.LittleEndian.AppendUint64(nil, cmdQueryPathInfos)
	b = appendSet(b, paths)
	if _, err := d.in.Write(b); err != nil {
		return nil, d.fail("metadata", err)
	}
	infos := make(map[string]*PathInfo, len(paths))
	for {
		info, err := readPathInfo(d.out)
		if err != nil {
			return nil, d.fail("metadata", err)
		}
		if info == nil {
			break
		}
		if len(infos) == len(paths) {
			return nil, d.fail("metadata", errors.New("more paths than asked about"))
		}
		infos[info.Path] = info
	}
	for _, p := range paths {
		if infos[p] == nil {
			return nil, fmt.Errorf("nixstore: nix-store --serve gave no metadata for %s (not valid?)", p)
		}
	}
	return infos, nil
}

// fail stops nix-store after a failed query and returns the error to
// report: its own words, when it ended by itself (its output ended, or its
// input was refused) and said why.
func (d *Session) fail(what string, err error) error {
	ended := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EPIPE)
	d.cmd.Process.Kill()
	if werr := d.wait(); ended && werr != nil {
		return werr
	}
	return fmt.Errorf("nixstore: nix-store --serve, asked for the %s: %w", what, err)
}

// Request writes the commands that dump paths, then ends nix-store's input.
func (d *Session) Request(paths []string) {
	d.fed = make(chan struct{})
	go func() {
		defer close(d.fed)
		defer d.in.Close()
		var b []byte
		for _, p := range paths {
			b = binary.LittleEndian.AppendUint64(b[:0], cmdDumpStorePath)
			b = appendStr(b, p)
			if _, err := d.in.Write(b); err != nil {
				return // it stopped reading: its exit says why
			}
		}
	}()
}

// dumpPipe is the size of the pipe nix-store --serve dumps NARs into.
const dumpPipe = 1 << 20

// Session is a running nix-store --serve: before Request, Closure returns
// every path paths refer to, directly or not, and paths themselves; Info
// each path's metadata from the store's database. Request gives it the
// paths whose NARs to dump (once); Read then returns their NARs back to
// back, then the end; an early end is nix-store's failure. Close stops it,
// also while a Read is blocked on it, and waits for it to end.
type Session struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.ReadCloser
	t    *tail.Buffer
	fed  chan struct{} // made by Request, closed once every command is written (or refused)
	once sync.Once
	err  error
}

// Read reads the NARs; an end before the last one's is nix-store's error,
// when it failed.
func (d *Session) Read(p []byte) (int, error) {
	n, err := d.out.Read(p)
	if err == io.EOF {
		if werr := d.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (d *Session) wait() error {
	d.once.Do(func() {
		if err := d.cmd.Wait(); err != nil {
			d.err = nixErr("--serve", err, d.t)
		}
	})
	return d.err
}

// Close stops nix-store if it is still running (a Read blocked on it
// returns) and waits for it: one never asked for anything just sees its
// input end. After a Read saw the end, it reports nothing new.
func (d *Session) Close() error {
	if d.fed == nil {
		d.in.Close()
	} else {
		d.cmd.Process.Kill()
		<-d.fed
	}
	err := d.wait()
	d.out.Close()
	return err
}

// Invalid returns which of paths are not valid in the store.
func (n *Store) Invalid(ctx context.Context, paths []string) (map[string]bool, error) {
	invalid := map[string]bool{}
	for _, b := range batches(paths) {
		lines, err := n.output(ctx, append([]string{"--check-validity", "--print-invalid", "--"}, b...)...)
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if l != "" {
				invalid[l] = true
			}
		}
	}
	return invalid, nil
}

// Import starts nix-store --serve --write: the import speaking Nix's serve
// protocol, whose add-NAR command streams each NAR into the store as it
// arrives (neither nix-store nor the daemon behind it holds a NAR in
// memory) and registers the path only if the NAR's size and SHA-256 are
// the ones given with it.
func (n *Store) Import(ctx context.Context) (*Importer, error) {
	cmd, t := n.command(ctx, "--serve", "--write")
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nixErr("--serve", err, t)
	}
	return &Importer{cmd: cmd, in: in, out: out, t: t}, nil
}

// Importer is a running nix-store --serve --write: Write is its input,
// Read its output. A path it was given completely is added once it replied
// for it; a path not given completely is never added.
type Importer struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.ReadCloser
	t    *tail.Buffer
	once sync.Once
	err  error
}

func (im *Importer) Write(p []byte) (int, error) {
	n, err := im.in.Write(p)
	if err != nil {
		// It stopped reading: its own words say why.
		im.in.Close()
		if werr := im.Wait(); werr != nil {
			return n, werr
		}
		return n, fmt.Errorf("nix-store --serve stopped reading: %w", err)
	}
	return n, nil
}

func (im *Importer) Read(p []byte) (int, error) { return im.out.Read(p) }

// CloseWrite ends its input: it finishes the paths it was given, then
// exits.
func (im *Importer) CloseWrite() error { return im.in.Close() }

// Wait waits for nix-store to exit; its output must have been read to EOF
// (or it killed). An error carries its last words.
func (im *Importer) Wait() error {
	im.once.Do(func() {
		im.in.Close()
		if err := im.cmd.Wait(); err != nil {
			im.err = nixErr("--serve", err, im.t)
		}
	})
	return im.err
}

// Kill stops it at once.
func (im *Importer) Kill() {
	if im.cmd.Process != nil {
		im.cmd.Process.Kill()
	}
}
