package transfer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/nbship/nbship/internal/confine"
	"github.com/nbship/nbship/nixstore"
)

// Source is a manifest plus where each file entry's bytes come from.
type Source struct {
	Manifest Manifest
	paths    []string // local path per entry ("" for directories)
	// confined: paths are real paths, opened without following symlinks
	// (List without FollowAnySymlink), so a file is read where it was
	// checked to be.
	confined bool
	stamps   []stamp      // what each file looked like when collected
	store    StoreReader  // where nar entries come from
	pending  *pendingDump // the store's dump, started by CollectStore
}

// stamp is what changes when a file is written to or replaced: Send checks
// it again after reading the file (the receiver checks every byte against
// the announced SHA-256 anyway; this names the cause on the sending end).
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

func stampOf(fi fs.FileInfo) stamp {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return stamp{size: fi.Size()}
	}
	return stamp{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
}

// CollectOptions say which symlinks the sender follows.
type CollectOptions struct {
	// FollowAnySymlink follows every symlink, wherever it leads, as
	// `tar -h` does. Without it a symlink met in a directory argument is
	// followed only when it resolves inside that argument's tree or into
	// the Nix store; any other is refused with a *LinkError. An argument
	// that is itself a symlink is always followed: naming it is consent.
	FollowAnySymlink bool

	storeDir string // tests: a store of their own (nixstore.Dir when empty)
}

// LinkError is a symlink that leads out of the tree being sent and the
// Nix store, refused unless FollowAnySymlink.
type LinkError struct {
	Link   string // the symlink
	Target string // where it resolves to
	Tree   string // the argument it was found under
}

func (e *LinkError) Error() string {
	return fmt.Sprintf("transfer: %s points outside %s and the Nix store (-> %s); not following it", e.Link, e.Tree, e.Target)
}

// Collect builds a Source from local paths with List (default options),
// then hashes every file, so the manifest announces each SHA-256 before
// any data moves and the receiver can skip what it already has.
func Collect(ctx context.Context, args []string) (*Source, error) {
	src, err := List(args, CollectOptions{})
	if err != nil {
		return nil, err
	}
	if err := src.Hash(ctx); err != nil {
		return nil, err
	}
	return src, nil
}

// List builds a Source from local paths as `tar -h` would see them,
// following symlinks as o allows: a directory argument contributes its
// contents at the top level, a file argument contributes itself under its
// base name. It lists the entries, their sizes and modes, quickly (a path
// that is not there fails here); Hash must follow before the Source is
// sent.
func List(args []string, o CollectOptions) (*Source, error) {
	c := newCollector(o)
	for _, a := range args {
		p, fi, err := c.arg(a)
		if err != nil {
			return nil, err
		}
		if fi.IsDir() {
			if err := c.walk(p, "", p, fi, nil); err != nil {
				return nil, err
			}
			continue
		}
		if err := c.add(p, filepath.Base(a), fi); err != nil {
			return nil, err
		}
	}
	return c.src, nil
}

// CollectEach is Collect with every argument an entry of its own at the
// top level, named by its base name: a directory argument's contents go
// under its name, a file argument is that file. Symlinks are followed as
// by List, including a symlink that is itself an argument.
func CollectEach(ctx context.Context, args []string, o CollectOptions) (*Source, error) {
	c := newCollector(o)
	for _, a := range args {
		p, fi, err := c.arg(a)
		if err != nil {
			return nil, err
		}
		name := filepath.Base(a)
		if !fi.IsDir() {
			if err := c.add(p, name, fi); err != nil {
				return nil, err
			}
			continue
		}
		if err := c.addEntry(Entry{Name: name, Type: TypeDir, Mode: fi.Mode().Perm()}, "", a); err != nil {
			return nil, err
		}
		if err := c.walk(p, name, p, fi, nil); err != nil {
			return nil, err
		}
	}
	if err := c.src.Hash(ctx); err != nil {
		return nil, err
	}
	return c.src, nil
}

type collector struct {
	src   *Source
	seen  map[string]bool
	any   bool     // FollowAnySymlink
	store []string // confined: the store's real path, if there is one
}

func newCollector(o CollectOptions) *collector {
	c := &collector{src: &Source{Manifest: Manifest{Version: Version}}, seen: map[string]bool{}, any: o.FollowAnySymlink}
	if !c.any {
		c.src.confined = true
		c.store = confine.Roots(cmp.Or(o.storeDir, nixstore.Dir))
	}
	return c
}

// arg stats an argument, following it if it is a symlink. Confined, it
// returns the argument's real path: every path recorded below it is then
// a real path, opened later without following symlinks.
func (c *collector) arg(a string) (string, fs.FileInfo, error) {
	if c.any {
		fi, err := os.Stat(a)
		if err != nil {
			return "", nil, fmt.Errorf("transfer: %w", err)
		}
		return a, fi, nil
	}
	p, _, err := confine.Resolve(a, nil)
	if err != nil {
		return "", nil, fmt.Errorf("transfer: %w", err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return "", nil, fmt.Errorf("transfer: %w", err)
	}
	return p, fi, nil
}

// follow stats p, an entry of a directory under tree (the real path of an
// argument), and returns the path to read it by: p itself, or, confined,
// where the symlink p resolves to, which must lie in tree or the store.
func (c *collector) follow(p, tree string) (string, fs.FileInfo, error) {
	if c.any {
		fi, err := os.Stat(p)
		if err != nil {
			return "", nil, fmt.Errorf("transfer: %w", err)
		}
		return p, fi, nil
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return "", nil, fmt.Errorf("transfer: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return p, fi, nil
	}
	real, inside, err := confine.Resolve(p, append([]string{tree}, c.store...))
	if err != nil {
		return "", nil, fmt.Errorf("transfer: %s is a symlink that does not resolve: %w", p, err)
	}
	if !inside {
		return "", nil, &LinkError{Link: p, Target: real, Tree: tree}
	}
	if fi, err = os.Lstat(real); err != nil {
		return "", nil, fmt.Errorf("transfer: %w", err)
	}
	return real, fi, nil
}

type dirID struct{ dev, ino uint64 }

func idOf(fi fs.FileInfo) dirID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return dirID{}
	}
	return dirID{uint64(st.Dev), st.Ino}
}

// walk adds the contents of dir (whose entries get the prefix) following
// symlinks as allowed under tree; stack holds the directories on the
// current path, to stop loops.
func (c *collector) walk(dir, prefix, tree string, fi fs.FileInfo, stack []dirID) error {
	id := idOf(fi)
	for _, s := range stack {
		if s == id {
			return fmt.Errorf("transfer: %s: symlink loop (a directory contains itself)", dir)
		}
	}
	stack = append(stack, id)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	for _, de := range ents { // ReadDir sorts by name
		name := de.Name()
		if prefix != "" {
			name = prefix + "/" + name
		}
		p, cfi, err := c.follow(filepath.Join(dir, de.Name()), tree)
		if err != nil {
			return err
		}
		if cfi.IsDir() {
			if err := c.addEntry(Entry{Name: name, Type: TypeDir, Mode: cfi.Mode().Perm()}, "", p); err != nil {
				return err
			}
			if err := c.walk(p, name, tree, cfi, stack); err != nil {
				return err
			}
			continue
		}
		if err := c.add(p, name, cfi); err != nil {
			return err
		}
	}
	return nil
}

func (c *collector) add(p, name string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("transfer: %s is a %s; nbship sends only files and directories", p, kind(fi.Mode()))
	}
	if err := c.addEntry(Entry{Name: name, Type: TypeFile, Mode: fi.Mode().Perm(), Size: fi.Size()}, p, p); err != nil {
		return err
	}
	c.src.stamps[len(c.src.stamps)-1] = stampOf(fi)
	return nil
}

func (c *collector) addEntry(e Entry, src, origin string) error {
	if err := CheckName(e.Name); err != nil {
		return fmt.Errorf("transfer: %s: cannot send as %q: %v", origin, e.Name, err)
	}
	if c.seen[e.Name] {
		return fmt.Errorf("transfer: %s: two arguments both provide %q", origin, e.Name)
	}
	c.seen[e.Name] = true
	c.src.Manifest.Entries = append(c.src.Manifest.Entries, e)
	c.src.paths = append(c.src.paths, src)
	c.src.stamps = append(c.src.stamps, stamp{})
	if e.Type == TypeFile {
		c.src.Manifest.Total += e.Size
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeDevice != 0:
		return "device file"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "special file"
}

// Hash fills in every file's SHA-256 (of a Source from List), a worker
// per core.
func (s *Source) Hash(ctx context.Context) error {
	idx := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			for i := range idx {
				e := &s.Manifest.Entries[i]
				sum, err := s.hashFile(s.paths[i], e.Size, buf)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				e.sum = sum
				e.SHA256 = hex.EncodeToString(sum[:])
			}
		}()
	}
feed:
	for i, e := range s.Manifest.Entries {
		if e.Type != TypeFile {
			continue
		}
		select {
		case idx <- i:
		case <-ctx.Done():
			break feed
		case err := <-errs:
			errs <- err
			break feed
		}
	}
	close(idx)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return ctx.Err()
}

// open opens the file of an entry.
func (s *Source) open(p string) (*os.File, error) {
	if s.confined {
		// O_NONBLOCK: a FIFO swapped in since the listing does not hang
		// the open; it is refused here.
		f, err := confine.Open(p, syscall.O_NONBLOCK)
		if err != nil {
			return nil, err
		}
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%s is no longer a regular file", p)
		}
		return f, nil
	}
	return os.Open(p)
}

func (s *Source) hashFile(p string, size int64, buf []byte) ([32]byte, error) {
	f, err := s.open(p)
	if err != nil {
		return [32]byte{}, fmt.Errorf("transfer: %w", err)
	}
	defer f.Close()
	return hashOpen(f, p, size, buf)
}

func hashFile(p string, size int64, buf []byte) ([32]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return [32]byte{}, fmt.Errorf("transfer: %w", err)
	}
	defer f.Close()
	return hashOpen(f, p, size, buf)
}

func hashOpen(f *os.File, p string, size int64, buf []byte) ([32]byte, error) {
	var sum [32]byte
	h := sha256.New()
	// Only the Reader: *os.File's WriteTo would bring its own buffer.
	n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf)
	if err != nil {
		return sum, fmt.Errorf("transfer: reading %s: %w", p, err)
	}
	if n != size {
		return sum, fmt.Errorf("transfer: %s changed size while being read (%d, then %d bytes); send it when it is finished", p, size, n)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// EncoderLevel maps a level name to zstd's: auto (0: the default level,
// better on a link much slower than the compressor), fastest, default or
// better.
func EncoderLevel(name string) (zstd.EncoderLevel, error) {
	switch name {
	case "", "auto":
		return 0, nil
	case "fastest":
		return zstd.SpeedFastest, nil
	case "default":
		return zstd.SpeedDefault, nil
	case "better":
		return zstd.SpeedBetterCompression, nil
	}
	return 0, fmt.Errorf("transfer: compression level %q is not auto, fastest, default or better", name)
}

// SendOptions tune the sending end.
type SendOptions struct {
	Level    zstd.EncoderLevel // 0 = auto (see adapter)
	Progress *Counters         // optional live counters
}

// Stats is what one transfer did.
type Stats struct {
	Files  int   `json:"files"`        // file entries in the stream
	Sent   int   `json:"files_sent"`   // files whose bytes crossed
	Reused int   `json:"files_reused"` // files the receiver already had
	Bytes  int64 `json:"bytes"`        // raw bytes of the files sent
	// Resumed is how many bytes of the files sent were not sent again: a
	// failed attempt had brought them and both ends found them the same.
	Resumed    int64 `json:"resumed_bytes,omitempty"`
	Compressed int64 `json:"compressed_bytes"`
	// Stored is how many of Bytes went as they are, not compressed: files
	// zstd would not shrink, and stretches of other files and of NARs
	// that reached the receiver sooner that way on this link.
	Stored int64 `json:"stored_bytes"`
	// Level is the zstd level the stream ended at (auto starts at the
	// default and may move to better).
	Level     string  `json:"level,omitempty"`
	Seconds   float64 `json:"seconds"`
	Published string  `json:"published,omitempty"`
}

type readyMsg struct {
	Version int `json:"version"`
}

type ackMsg struct {
	OK        bool   `json:"ok"`
	Error     string `json:"error,omitempty"`
	Refused   bool   `json:"refused,omitempty"` // the error is a refusal of what was sent
	Published string `json:"published,omitempty"`
	Files     int    `json:"files"`
	Bytes     int64  `json:"bytes"`
}

// Send streams src over conn to a Receive at the other end and returns only
// after the receiver acknowledged that every hash matched and the files were
// committed. Cancelling ctx closes conn when it is an io.Closer.
func Send(ctx context.Context, conn io.ReadWriter, src *Source, o SendOptions) (*Stats, error) {
	start := time.Now()
	if c, ok := conn.(io.Closer); ok {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
	}
	cnt := o.Progress
	if cnt == nil {
		cnt = new(Counters)
	}
	hdr, err := json.Marshal(&src.Manifest)
	if err != nil {
		return nil, err
	}
	if n := len(src.Manifest.Entries); len(hdr) > maxHeader || n > MaxEntries {
		return nil, fmt.Errorf("transfer: %d entries (a header of %d bytes) are more than a stream carries (%d entries, %d MiB); send fewer at once", n, len(hdr), MaxEntries, maxHeader>>20)
	}
	// The store's dump (started by CollectStore; again, for a Source sent
	// before) is stopped when the stream ends.
	pending := src.pending
	src.pending = nil
	if pending == nil && src.store != nil {
		pending = startDump(ctx, src.store)
	}
	defer pending.close()
	// The preface and the header go out while the receiver's ready message
	// comes in: waiting for it first would cost a round trip. The header
	// goes only to the pinned receiver (the handshake checked its pin). A
	// receiver that refused this end's certificate sends an alert instead
	// of ready, and that is the error worth reporting, even when the write
	// failed first.
	wrote := make(chan error, 1)
	go func() {
		pre := append([]byte(magic), byte(Version>>8), byte(Version))
		_, err := conn.Write(pre)
		if err == nil {
			err = writeMsg(conn, msgHeader, hdr)
		}
		wrote <- err
	}()
	p, err := expect(conn, msgReady, maxControl)
	if err != nil {
		if c, ok := conn.(io.Closer); ok {
			c.Close() // ends the write
			<-wrote
		}
		return nil, ctxErr(ctx, err)
	}
	var ready readyMsg
	if err := json.Unmarshal(p, &ready); err != nil {
		return nil, fmt.Errorf("transfer: bad ready message: %w", err)
	}
	if ready.Version != Version {
		return nil, fmt.Errorf("transfer: the receiver speaks stream version %d, this nbship %d; run the same nbship on both ends", ready.Version, Version)
	}
	if err := <-wrote; err != nil {
		return nil, ctxErr(ctx, err)
	}
	p, err = expectWant(conn)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	want, offers, err := parseWant(p, &src.Manifest)
	if err != nil {
		return nil, err
	}
	st := &Stats{}
	var toSend, count int64
	for i, e := range src.Manifest.Entries {
		if !e.hasData() {
			continue
		}
		st.Files++
		if wanted(want, i) {
			toSend += e.Size
			count++
		}
	}
	cnt.begin(toSend, count)

	// The receiver's final word (ack or abort) can come at any time: an
	// abort while we are still writing means it gave up (disk full, bad
	// data), and then its reason is the error worth reporting.
	type final struct {
		ack ackMsg
		err error
	}
	done := make(chan final, 1)
	go func() {
		p, err := expectAck(conn)
		if err != nil {
			done <- final{err: err}
			if c, ok := conn.(io.Closer); ok {
				c.Close()
			}
			return
		}
		var a ackMsg
		if err := json.Unmarshal(p, &a); err != nil {
			a = ackMsg{Error: "bad acknowledgement: " + err.Error()}
		}
		done <- final{ack: a}
		if !a.OK {
			// The receiver gave up and reads no more: unblock our writer.
			if c, ok := conn.(io.Closer); ok {
				c.Close()
			}
		}
	}()

	werr := sendData(ctx, conn, src, pending, want, offers, o, cnt, st)
	var we writeErr
	if werr != nil && !errors.As(werr, &we) {
		// A local problem (a file changed under us): tell the receiver why,
		// so it discards what it has, and stop.
		writeMsg(conn, msgAbort, []byte(werr.Error()))
		if c, ok := conn.(io.Closer); ok {
			c.Close()
		}
		return nil, werr
	}
	var f final
	select {
	case f = <-done:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-afterIf(werr != nil, 5*time.Second):
		// The connection broke and the receiver said nothing.
		return nil, ctxErr(ctx, fmt.Errorf("transfer: sending: %w", werr))
	}
	if f.err != nil {
		return nil, ctxErr(ctx, f.err)
	}
	if werr != nil {
		return nil, ctxErr(ctx, fmt.Errorf("transfer: sending: %w", werr))
	}
	if !f.ack.OK {
		if f.ack.Refused {
			return nil, &PeerRefusedError{Reason: f.ack.Error}
		}
		return nil, &PeerError{Reason: f.ack.Error}
	}
	st.Seconds = time.Since(start).Seconds()
	st.Compressed = cnt.Compressed.Load()
	st.Published = f.ack.Published
	return st, nil
}

// afterIf is time.After(d) when cond holds, else a channel that never fires.
func afterIf(cond bool, d time.Duration) <-chan time.Time {
	if !cond {
		return nil
	}
	return time.After(d)
}

func wanted(bitmap []byte, i int) bool { return bitmap[i/8]&(1<<(i%8)) != 0 }

func sendData(ctx context.Context, conn io.Writer, src *Source, pending *pendingDump, want []byte, offers []offer, o SendOptions, cnt *Counters, st *Stats) error {
	cw := &chunkWriter{w: conn, count: func(n int) { cnt.Compressed.Add(int64(n)) }}
	level := o.Level
	if level == 0 {
		level = zstd.SpeedDefault
	}
	out := &frames{cw: cw, level: level, long: src.Manifest.Long}
	ad := newAdapter(conn, o.Level == 0, cnt.Compressed.Load)
	buf := make([]byte, 256<<10) // one for every file: no garbage per file
	var nars []*Entry
	for i := range src.Manifest.Entries {
		if e := &src.Manifest.Entries[i]; e.Type == TypeNAR && e.hasData() && wanted(want, i) {
			nars = append(nars, e)
		}
	}
	var dump *narDump
	if len(nars) > 0 {
		var err error
		if dump, err = pending.request(nars); err != nil {
			return err
		}
	}
	for i := range src.Manifest.Entries {
		e := &src.Manifest.Entries[i]
		if !e.hasData() {
			continue
		}
		if !wanted(want, i) {
			st.Reused++
			continue
		}
		var err error
		var from int64
		var of *offer
		if len(offers) > 0 && offers[0].index == i {
			of, offers = &offers[0], offers[1:]
		}
		if e.Type == TypeNAR {
			from, err = sendNAR(ctx, out, ad, src.store, dump, e, of, cnt, buf)
		} else {
			from, err = sendFile(out, ad, src, i, of, cnt, buf)
		}
		if err != nil {
			out.abort()
			return err
		}
		st.Sent++
		st.Bytes += e.Size - from
		st.Resumed += from
		cnt.Files.Add(1)
	}
	if err := out.Close(); err != nil {
		return err
	}
	st.Stored = out.storedBytes
	st.Level = out.level.String()
	if err := writeMsg(conn, msgEnd, nil); err != nil {
		return writeErr{err}
	}
	return nil
}

// writeErr marks an error of the connection (not of a local file). Every
// error the encoder returns comes from writing to the connection.
type writeErr struct{ error }

func (w writeErr) Unwrap() error { return w.error }

// sendFile streams a file into out: stored when zstd would not shrink it,
// a big one as the adapter finds faster on this link, else compressed. Its
// bytes are not hashed again here (the receiver checks every one against
// the announced SHA-256); a file that was written to or replaced since it
// was collected is caught by its stamp.
//
// With an offer (the receiver kept a prefix from a failed attempt), the
// same prefix of the file is hashed here first: when it matches, only the
// rest is sent. It returns where the bytes sent began.
func sendFile(out *frames, ad *adapter, src *Source, i int, of *offer, cnt *Counters, buf []byte) (int64, error) {
	p, was, e := src.paths[i], src.stamps[i], &src.Manifest.Entries[i]
	f, err := src.open(p)
	if err != nil {
		return 0, fmt.Errorf("transfer: %w", err)
	}
	defer f.Close()
	stored := incompressible(f, e.Size, buf)
	from, err := resumeFrom(out, f, p, of, stored, buf)
	if err != nil {
		return 0, err
	}
	cnt.Total.Add(-from) // not moved again
	size := e.Size - from
	r := &fileReader{f: f, path: p, size: e.Size, buf: buf, cnt: cnt}
	if !stored && ad.unacked != nil && size >= adaptMin {
		err = ad.sendFile(out, r, size)
	} else {
		var w io.Writer
		if w, err = out.way(stored); err == nil {
			err = r.send(w, size)
		}
	}
	if err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("transfer: %w", err)
	}
	if now := stampOf(fi); now != was {
		return 0, fmt.Errorf("transfer: %s changed while being sent (it was written to after nbship hashed it); nothing was published", p)
	}
	return from, nil
}

// resumeFrom answers an offer: it hashes the offered prefix of f, says in
// the stream whether the rest or the whole follows, and leaves f where
// the bytes to send begin.
func resumeFrom(out *frames, f *os.File, p string, of *offer, stored bool, buf []byte) (int64, error) {
	if of == nil {
		return 0, nil
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, of.length), buf)
	if err != nil {
		return 0, fmt.Errorf("transfer: reading %s: %w", p, err)
	}
	flag, from := byte(resumeWhole), int64(0)
	if n == of.length && [32]byte(h.Sum(nil)) == of.sum {
		flag, from = resumeRest, of.length
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return 0, fmt.Errorf("transfer: %s: %w", p, err)
	}
	w, err := out.way(stored)
	if err != nil {
		return 0, err
	}
	if _, err := w.Write([]byte{flag}); err != nil {
		return 0, writeErr{err}
	}
	return from, nil
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
