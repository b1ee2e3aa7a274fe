package transfer

import (
	"bufio"
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
)

// NixStore is the local Nix store through Nix 2.8's nix-store command:
// --serve (the sender's session), --serve --write (the import) and
// --check-validity (the import confirmed).
// It is both a StoreReader and a StoreWriter.
type NixStore struct {
	Env []string // nix-store's environment; nil: this process's
}

// ErrNoNixStore is a host without nix-store on its PATH.
var ErrNoNixStore = errors.New("nix-store is not on this host's PATH; install Nix there (Debian: apt-get install nix-bin)")

// LookNixStore reports ErrNoNixStore when nix-store cannot be run here.
func LookNixStore() error {
	if _, err := exec.LookPath("nix-store"); err != nil {
		return ErrNoNixStore
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

func (n *NixStore) command(ctx context.Context, args ...string) (*exec.Cmd, *tail) {
	cmd := exec.CommandContext(ctx, "nix-store", args...)
	cmd.Env = n.Env
	t := &tail{}
	cmd.Stderr = t
	return cmd, t
}

// output runs nix-store and returns its stdout lines.
func (n *NixStore) output(ctx context.Context, args ...string) ([]string, error) {
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

func nixErr(op string, err error, t *tail) error {
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("transfer: %w", ErrNoNixStore)
	}
	if l := t.last(); l != "" {
		return fmt.Errorf("transfer: nix-store %s: %s", op, l)
	}
	return fmt.Errorf("transfer: nix-store %s: %w", op, err)
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
func (n *NixStore) Dump(ctx context.Context) (NARDump, error) {
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
	d := &dump{cmd: cmd, in: in, out: out, t: t}
	if err := greetServe(struct {
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
		return nil, fmt.Errorf("transfer: nix-store --serve: %w", err)
	}
	return d, nil
}

// Closure asks nix-store for the closure of paths; before Request only.
func (d *dump) Closure(paths []string) ([]string, error) {
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
func (d *dump) Info(paths []string) (map[string]*PathInfo, error) {
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
			return nil, fmt.Errorf("transfer: nix-store --serve gave no metadata for %s (not valid?)", p)
		}
	}
	return infos, nil
}

// readPathInfo reads one path's metadata as cmdQueryPathInfos gives it
// (serve protocol 2.4 and later); nil: the empty path that ends them.
func readPathInfo(r io.Reader) (*PathInfo, error) {
	p, err := readStr(r, maxServeStr)
	if err != nil || p == "" {
		return nil, err
	}
	info := &PathInfo{Path: p}
	var hash string
	var sizes [2]uint64
	if info.Deriver, err = readStr(r, maxServeStr); err == nil {
		if info.References, err = readSet(r); err == nil {
			if sizes[0], err = readNum(r); err == nil { // download size
				if sizes[1], err = readNum(r); err == nil {
					hash, err = readStr(r, maxServeStr)
				}
			}
		}
	}
	if err == nil {
		info.CA, err = readStr(r, maxServeStr)
	}
	if err == nil {
		info.Sigs, err = readSet(r)
	}
	if err != nil {
		return nil, err
	}
	if len(info.Sigs) == 0 {
		info.Sigs = nil
	}
	if sizes[1] > 1<<62 {
		return nil, fmt.Errorf("%s: a NAR size of %d", p, sizes[1])
	}
	info.NARSize = int64(sizes[1])
	if info.NARHash, err = ParseNARHash(hash); err != nil {
		return nil, fmt.Errorf("%s: %v", p, err)
	}
	return info, nil
}

// fail stops nix-store after a failed query and returns the error to
// report: its own words, when it ended by itself (its output ended, or its
// input was refused) and said why.
func (d *dump) fail(what string, err error) error {
	ended := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EPIPE)
	d.cmd.Process.Kill()
	if werr := d.wait(); ended && werr != nil {
		return werr
	}
	return fmt.Errorf("transfer: nix-store --serve, asked for the %s: %w", what, err)
}

// Request writes the commands that dump paths, then ends nix-store's input.
func (d *dump) Request(paths []string) {
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

// dump is a running nix-store --serve dumping NARs.
type dump struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.ReadCloser
	t    *tail
	fed  chan struct{} // made by Request, closed once every command is written (or refused)
	once sync.Once
	err  error
}

// Read reads the NARs; an end before the last one's is nix-store's error,
// when it failed.
func (d *dump) Read(p []byte) (int, error) {
	n, err := d.out.Read(p)
	if err == io.EOF {
		if werr := d.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (d *dump) wait() error {
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
func (d *dump) Close() error {
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
func (n *NixStore) Invalid(ctx context.Context, paths []string) (map[string]bool, error) {
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
func (n *NixStore) Import(ctx context.Context) (Importer, error) {
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
	return &importer{cmd: cmd, in: in, out: out, t: t}, nil
}

type importer struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.ReadCloser
	t    *tail
	once sync.Once
	err  error
}

func (im *importer) Write(p []byte) (int, error) {
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

func (im *importer) Read(p []byte) (int, error) { return im.out.Read(p) }

func (im *importer) CloseWrite() error { return im.in.Close() }

// Wait waits for nix-store to exit; its output must have been read to EOF
// (or it killed). An error carries its last words.
func (im *importer) Wait() error {
	im.once.Do(func() {
		im.in.Close()
		if err := im.cmd.Wait(); err != nil {
			im.err = nixErr("--serve", err, im.t)
		}
	})
	return im.err
}

func (im *importer) Kill() {
	if im.cmd.Process != nil {
		im.cmd.Process.Kill()
	}
}

// tail keeps the last few KiB of a command's stderr, for its error.
type tail struct {
	mu sync.Mutex
	b  []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - 4096; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// last is the last non-empty line written.
func (t *tail) last() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var last string
	sc := bufio.NewScanner(bytes.NewReader(t.b))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}
