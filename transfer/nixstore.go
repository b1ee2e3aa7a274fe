package transfer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// NixStore is the local Nix store through Nix 2.8's nix-store command:
// --query --requisites, --dump-db, --export, --check-validity and --serve --write.
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

// Closure returns the closure of paths, dependencies first.
func (n *NixStore) Closure(ctx context.Context, paths []string) ([]string, error) {
	seen := map[string]bool{}
	var all []string
	for _, b := range batches(paths) {
		lines, err := n.output(ctx, append([]string{"--query", "--requisites", "--"}, b...)...)
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			if l != "" && !seen[l] {
				seen[l] = true
				all = append(all, l)
			}
		}
	}
	return all, nil
}

// Info reads the paths' metadata with nix-store --dump-db, whose
// registration format is, per path: the path, the NAR's SHA-256 (base16
// in Nix 2.8), the NAR's size, the deriver (or an empty line), the number
// of references and the references, one line each.
func (n *NixStore) Info(ctx context.Context, paths []string) (map[string]*PathInfo, error) {
	infos := make(map[string]*PathInfo, len(paths))
	for _, b := range batches(paths) {
		lines, err := n.output(ctx, append([]string{"--dump-db", "--"}, b...)...)
		if err != nil {
			return nil, err
		}
		if err := parseRegistrations(lines, infos); err != nil {
			return nil, err
		}
	}
	for _, p := range paths {
		if infos[p] == nil {
			return nil, fmt.Errorf("transfer: nix-store --dump-db gave no metadata for %s", p)
		}
	}
	return infos, nil
}

func parseRegistrations(lines []string, infos map[string]*PathInfo) error {
	for i := 0; i < len(lines); {
		if len(lines)-i < 5 {
			return fmt.Errorf("transfer: nix-store --dump-db: a registration of %d lines at line %d, want at least 5", len(lines)-i, i+1)
		}
		info := &PathInfo{Path: lines[i], Deriver: lines[i+3]}
		bad := func(what string, err error) error {
			return fmt.Errorf("transfer: nix-store --dump-db: %s of %s: %v", what, info.Path, err)
		}
		var err error
		if info.NARHash, err = ParseNARHash(lines[i+1]); err != nil {
			return bad("NAR hash", err)
		}
		if info.NARSize, err = strconv.ParseInt(lines[i+2], 10, 64); err != nil {
			return bad("NAR size", err)
		}
		nrefs, err := strconv.Atoi(lines[i+4])
		if err != nil || nrefs < 0 || nrefs > len(lines)-i-5 {
			return bad("number of references", fmt.Errorf("%q", lines[i+4]))
		}
		info.References = append([]string(nil), lines[i+5:i+5+nrefs]...)
		infos[info.Path] = info
		i += 5 + nrefs
	}
	return nil
}

// Dump streams the NAR of path, of size bytes, through the store: from
// nix-store --export, whose record around the NAR (a 1 before it; after it
// the export magic, the path, its references, its deriver and a final 0)
// is checked and dropped. (nix-store --dump would read the file system
// under /nix/store, not the store, which need not be there.)
func (n *NixStore) Dump(ctx context.Context, path string, size int64) (io.ReadCloser, error) {
	cmd, t := n.command(ctx, "--export", path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nixErr("--export", err, t)
	}
	d := &dump{cmd: cmd, out: out, t: t, path: path, nar: io.LimitReader(out, size)}
	var one [8]byte
	if _, err := io.ReadFull(out, one[:]); err != nil || binary.LittleEndian.Uint64(one[:]) != 1 {
		err = d.Close()
		if err == nil {
			err = fmt.Errorf("transfer: nix-store --export %s: its output does not start a record", path)
		}
		return nil, err
	}
	return d, nil
}

type dump struct {
	cmd  *exec.Cmd
	out  io.ReadCloser
	nar  io.Reader
	t    *tail
	path string
}

func (d *dump) Read(p []byte) (int, error) { return d.nar.Read(p) }

// Close checks that the export magic follows the NAR (else the NAR was not
// the size the database says), drops the rest of the record and waits.
func (d *dump) Close() error {
	var magic [8]byte
	_, merr := io.ReadFull(d.out, magic[:])
	if merr == nil {
		_, merr = io.Copy(io.Discard, io.LimitReader(d.out, 1<<20))
	}
	d.out.Close()
	err := d.cmd.Wait()
	switch {
	case err != nil:
		return nixErr("--export "+d.path, err, d.t)
	case merr != nil:
		return fmt.Errorf("transfer: nix-store --export %s: %w", d.path, merr)
	case binary.LittleEndian.Uint64(magic[:]) != exportMagic:
		return fmt.Errorf("transfer: %s: its NAR is not the size the store's database says; the store is corrupt or changed; check it with nix-store --verify --check-contents", d.path)
	}
	return nil
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
