package transfer

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nbship/nbship/internal/ldm"
	"github.com/nbship/nbship/internal/staging"
	"golang.org/x/sys/unix"
)

// Sink is where a receiver puts a stream's entries, in manifest order.
// Nothing it is given is verified yet: the receiver checks each file's hash
// after its last byte and fails the whole transfer on a mismatch, and the
// caller commits (renames, publishes) only after Receive's commit hook.
type Sink interface {
	// Want reports whether the file's bytes must be sent; false means the
	// sink already has a file with this hash and will get Reuse for it.
	Want(e *Entry) bool
	Mkdir(e *Entry) error
	Create(e *Entry) (io.WriteCloser, error)
	Reuse(e *Entry) error
	// Finish is called after every entry arrived and matched.
	Finish() error
}

// ReceiveOptions tune the receiving end.
type ReceiveOptions struct {
	Progress *Counters
	// Commit runs after every entry is verified and Finish succeeded, before
	// the sender is told; it returns what was published (for the summary).
	// Its error goes to the sender too.
	Commit func() (string, error)
}

// Receive reads one stream from conn into sink. On any error it tells the
// sender why (when the connection still works) and returns the error; the
// caller removes whatever the sink wrote.
func Receive(ctx context.Context, conn io.ReadWriter, sink Sink, o ReceiveOptions) (*Stats, error) {
	if c, ok := conn.(io.Closer); ok {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
	}
	start := time.Now()
	st, published, err := receive(ctx, conn, sink, o)
	if err != nil {
		if a, ok := sink.(Abandoner); ok {
			a.Abandon()
		}
		err = ctxErr(ctx, err)
		var pe *PeerError
		if !errors.As(err, &pe) && !errors.Is(err, ErrTruncated) {
			a, _ := json.Marshal(ackMsg{OK: false, Error: err.Error(), Refused: IsRefusal(err)})
			writeMsg(conn, msgAck, a)
		}
		return nil, err
	}
	a, _ := json.Marshal(ackMsg{OK: true, Published: published, Files: st.Files, Bytes: st.Bytes})
	if err := writeMsg(conn, msgAck, a); err != nil {
		// Committed, but the sender may not learn it: report, don't undo.
		return st, fmt.Errorf("transfer: committed, but could not acknowledge to the sender: %w", err)
	}
	st.Published = published
	st.Seconds = time.Since(start).Seconds()
	return st, nil
}

func receive(ctx context.Context, conn io.ReadWriter, sink Sink, o ReceiveOptions) (*Stats, string, error) {
	cnt := o.Progress
	if cnt == nil {
		cnt = new(Counters)
	}
	ready, _ := json.Marshal(readyMsg{Version: Version})
	if err := writeMsg(conn, msgReady, ready); err != nil {
		return nil, "", err
	}
	var pre [len(magic) + 2]byte
	if _, err := io.ReadFull(conn, pre[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, "", ErrTruncated
		}
		return nil, "", err
	}
	if string(pre[:len(magic)]) != magic {
		return nil, "", refused("it does not start with the nbship magic (is the other end nbship?)")
	}
	if v := binary.BigEndian.Uint16(pre[len(magic):]); v != Version {
		return nil, "", refused("version %d is not supported (this nbship speaks %d); run the same nbship on both ends", v, Version)
	}
	m, err := expectManifest(conn)
	if err != nil {
		return nil, "", err
	}
	if mc, ok := sink.(ManifestChecker); ok {
		// Checking may take a while (a store substituting paths): the
		// sender hears that the receiver is still there.
		stop := keepBusy(conn)
		err := mc.CheckManifest(ctx, m)
		stop()
		if err != nil {
			return nil, "", err
		}
	} else if len(m.narNames()) > 0 {
		return nil, "", &ManifestError{Msg: "the sender sent Nix store paths, and this receiver writes files (import store paths with recv --store)"}
	}
	want := make([]byte, (len(m.Entries)+7)/8)
	var total, count int64
	st := &Stats{}
	rs, _ := sink.(Resumer)
	var offers []offer
	offered := map[int]int64{}
	for i := range m.Entries {
		e := &m.Entries[i]
		if !e.hasData() {
			continue
		}
		st.Files++
		if sink.Want(e) {
			want[i/8] |= 1 << (i % 8)
			total += e.Size
			count++
			if rs == nil {
				continue
			}
			if n, sum, ok := rs.Offer(e); ok {
				offers = append(offers, offer{index: i, length: n, sum: sum})
				offered[i] = n
			}
		}
	}
	cnt.begin(total, count)
	if err := writeMsg(conn, msgWant, appendOffers(want, offers)); err != nil {
		return nil, "", err
	}
	cr := &chunkReader{r: conn, count: func(n int) { cnt.Compressed.Add(int64(n)) }}
	dec, err := zstd.NewReader(cr,
		zstd.WithDecoderMaxWindow(64<<20),
		zstd.WithDecoderMaxMemory(256<<20),
		zstd.WithDecoderConcurrency(2))
	if err != nil {
		return nil, "", err
	}
	defer dec.Close()
	var data io.Reader = dec
	if m.Long {
		data = ldm.NewDecoder(dec)
	}
	buf := make([]byte, 256<<10)
	for i := range m.Entries {
		e := &m.Entries[i]
		switch {
		case e.Type == TypeDir:
			if err := sink.Mkdir(e); err != nil {
				return nil, "", err
			}
		case !wanted(want, i):
			if err := sink.Reuse(e); err != nil {
				return nil, "", err
			}
			st.Reused++
		default:
			from, err := receiveFile(conn, data, sink, e, offered[i], buf, cnt)
			if err != nil {
				return nil, "", err
			}
			st.Resumed += from
			if v, ok := sink.(Verifier); ok {
				if err := v.Verified(ctx, e); err != nil {
					return nil, "", err
				}
			}
			st.Sent++
			st.Bytes += e.Size - from
			cnt.Files.Add(1)
		}
	}
	// Everything announced has arrived: anything more is refused.
	var one [1]byte
	n, err := io.ReadFull(data, one[:])
	if n > 0 {
		return nil, "", refused("more data than the %d bytes the header announced", total)
	}
	if err != nil && err != io.EOF {
		return nil, "", decodeErr(err)
	}
	if !cr.done {
		return nil, "", refused("data after the end of the compressed stream")
	}
	if err := sink.Finish(); err != nil {
		return nil, "", err
	}
	st.Compressed = cnt.Compressed.Load()
	var published string
	if o.Commit != nil {
		if published, err = o.Commit(); err != nil {
			return nil, "", err
		}
	}
	return st, published, nil
}

// receiveFile writes e into sink, and returns how many of its bytes a
// failed attempt had already brought: offered is the length of the prefix
// the want offered (0: none), and the sender says at the start of the
// entry's data whether it sends only the rest.
func receiveFile(conn io.Writer, dec io.Reader, sink Sink, e *Entry, offered int64, buf []byte, cnt *Counters) (int64, error) {
	from, err := resumeFlag(dec, e, offered)
	if err != nil {
		return 0, err
	}
	var w io.WriteCloser
	var h hash.Hash
	cnt.Total.Add(-from) // not moved again
	if from > 0 {
		// A store sink gives Nix the kept start of the NAR now, at Nix's
		// pace, reading nothing meanwhile: the sender hears that the
		// receiver is still there.
		stop := keepBusy(conn)
		w, h, err = sink.(Resumer).ResumeEntry(e)
		stop()
	} else {
		w, err = sink.Create(e)
		h = sha256.New()
	}
	if err != nil {
		return 0, err
	}
	if err := fillFile(dec, w, h, e, from, buf, cnt); err != nil {
		return 0, err
	}
	return from, nil
}

// resumeFlag reads the sender's word on an offered entry: from where its
// bytes follow.
func resumeFlag(dec io.Reader, e *Entry, offered int64) (int64, error) {
	if offered == 0 {
		return 0, nil
	}
	var flag [1]byte
	if _, err := io.ReadFull(dec, flag[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, refused("%s: data ended before it began (truncated stream)", e.label())
		}
		return 0, decodeErr(err)
	}
	switch flag[0] {
	case resumeRest:
		return offered, nil
	case resumeWhole:
		return 0, nil
	}
	return 0, refused("%s: resume flag %d is neither %d nor %d", e.label(), flag[0], resumeWhole, resumeRest)
}

func fillFile(dec io.Reader, w io.WriteCloser, h hash.Hash, e *Entry, n int64, buf []byte, cnt *Counters) error {
	for n < e.Size {
		k, rerr := dec.Read(buf[:min(int64(len(buf)), e.Size-n)])
		if k > 0 {
			testHookData(e, buf[:k], n)
			h.Write(buf[:k])
			if _, err := w.Write(buf[:k]); err != nil {
				w.Close()
				return fmt.Errorf("transfer: writing %s: %w", e.label(), err)
			}
			n += int64(k)
			cnt.Raw.Add(int64(k))
		}
		if rerr == io.EOF {
			w.Close()
			return refused("%s: data ended after %d of its %d bytes (truncated stream)", e.label(), n, e.Size)
		}
		if rerr != nil {
			w.Close()
			return decodeErr(rerr)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("transfer: writing %s: %w", e.Name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != e.SHA256 {
		if e.Type == TypeNAR {
			return refused("%s: the NAR's SHA-256 %s does not match the announced %s; not imported, nor anything after it", e.label(), got, e.SHA256)
		}
		return refused("%s: SHA-256 %s does not match the announced %s", e.Name, got, e.SHA256)
	}
	return nil
}

// decodeErr classifies an error from reading the data: the link's own
// errors, a truncation and the sender's abort pass as they are; anything
// else is what the decoders found wrong with the data, a refusal.
func decodeErr(err error) error {
	var pe *PeerError
	var le *linkError
	switch {
	case errors.As(err, &le):
		return le.err
	case errors.As(err, &pe), errors.Is(err, ErrTruncated), IsRefusal(err):
		return err
	}
	return refused("%v", err)
}

// DirSink writes entries under a directory, confined to it by os.Root.
type DirSink struct {
	dir  string
	root *os.Root
	have func(sum [32]byte) (path string, ok bool)
	// reuse holds, for files the sender skipped, where the same bytes are.
	reuse map[string]string
	dirs  []*Entry
	buf   []byte // for re-hashing reused files
	// synced counts the background syncs of files being written.
	synced atomic.Int64

	// Resume (resume.go): keep the file in progress on Abandon; the
	// prefixes failed attempts left, those offered, the file being written.
	keepPartial bool
	partials    []keptPartial
	offered     map[string]*kept
	cur         *sinkFile
}

// NewDirSink writes into dir, which must exist and be empty. have, when not
// nil, names a local file with a given SHA-256: such files are not sent but
// hard-linked (or copied, when modes differ) and re-hashed.
func NewDirSink(dir string, have func(sum [32]byte) (string, bool)) (*DirSink, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	if len(ents) != 0 {
		return nil, fmt.Errorf("transfer: %s is not empty", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	return &DirSink{dir: dir, root: root, have: have, reuse: map[string]string{}}, nil
}

// Close releases the sink's directory handle.
func (s *DirSink) Close() error { return s.root.Close() }

func (s *DirSink) Want(e *Entry) bool {
	if s.have == nil {
		return true
	}
	p, ok := s.have(e.sum)
	if !ok {
		return true
	}
	s.reuse[e.Name] = p
	return false
}

func (s *DirSink) Mkdir(e *Entry) error {
	if err := s.root.Mkdir(e.Name, 0o700); err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	s.dirs = append(s.dirs, e)
	return nil
}

// syncEvery is how many bytes a file may take between its background
// syncs. The sink's last step, before the rename that publishes, is a
// syncfs of the whole tree, and what that waits for grows with what is not
// yet on disk: on this machine's virtual disk 73 MB of netboot files cost it
// 57-73 ms, almost all of it the device's flush, however early the
// write-out was started (sync_file_range: 43 ms). An fdatasync after every
// 8 MiB, in the background while the stream goes on, leaves it 7-10 ms.
const syncEvery = 8 << 20

type sinkFile struct {
	*os.File
	root *os.Root
	e    *Entry
	sink *DirSink

	n        int64 // bytes in the file
	closed   bool
	unsynced int64         // bytes written since the last sync was asked for
	syncing  chan struct{} // open while a background sync runs
	syncErr  error         // its error, read once syncing is closed
}

// Write writes p and, once syncEvery bytes are waiting and no sync is
// running, starts one.
func (f *sinkFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.n += int64(n)
	f.unsynced += int64(n)
	if err == nil && f.unsynced >= syncEvery && !f.busy() {
		if err := f.syncDone(); err != nil {
			return n, err
		}
		f.unsynced = 0
		f.syncing = make(chan struct{})
		// Close waits for the sync before closing the descriptor.
		fd := int(f.File.Fd())
		go func(done chan struct{}) {
			defer close(done)
			if f.syncErr = unix.Fdatasync(fd); f.syncErr == nil {
				f.sink.synced.Add(1)
			}
		}(f.syncing)
	}
	return n, err
}

func (f *sinkFile) busy() bool {
	if f.syncing == nil {
		return false
	}
	select {
	case <-f.syncing:
		return false
	default:
		return true
	}
}

// syncDone waits for the background sync, if one ran, and returns its
// error: a file the disk could not take (ENOSPC surfaces here on file
// systems that allocate late) fails the transfer like a failed write.
func (f *sinkFile) syncDone() error {
	if f.syncing == nil {
		return nil
	}
	<-f.syncing
	f.syncing = nil
	if f.syncErr != nil {
		return fmt.Errorf("syncing: %w", f.syncErr)
	}
	return nil
}

// Close waits for a background sync (the syncfs in Finish does the rest),
// closes the file and gives it its mode.
func (f *sinkFile) Close() error {
	serr := f.syncDone()
	f.closed = true
	if err := f.File.Close(); err != nil {
		return err
	}
	if serr != nil {
		return serr
	}
	return f.root.Chmod(f.e.Name, f.e.Mode.Perm())
}

func (s *DirSink) Create(e *Entry) (io.WriteCloser, error) {
	if k := s.offered[e.Name]; k != nil {
		// Offered, and sent whole: the prefix differed.
		k.f.Close()
		delete(s.offered, e.Name)
	}
	f, err := s.root.OpenFile(e.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	s.cur = &sinkFile{File: f, root: s.root, e: e, sink: s}
	return s.cur, nil
}

func (s *DirSink) Reuse(e *Entry) error {
	src, ok := s.reuse[e.Name]
	if !ok {
		return fmt.Errorf("transfer: %s was not sent and is not here", e.Name)
	}
	dst := filepath.Join(s.dir, e.Name) // e.Name is validated and its parents are ours
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("transfer: reusing %s: %w", e.Name, err)
	}
	if fi.Mode().Perm() != e.Mode.Perm() || os.Link(src, dst) != nil {
		if err := copyFile(src, dst, e.Mode.Perm()); err != nil {
			return fmt.Errorf("transfer: reusing %s: %w", e.Name, err)
		}
	}
	sum, err := hashFile(dst, e.Size, s.hashBuf())
	if err != nil {
		return err
	}
	if sum != e.sum {
		return fmt.Errorf("transfer: reused %s (from %s) does not have the announced SHA-256; it changed on disk", e.Name, src)
	}
	return nil
}

// copyFile copies src to a new file dst of the given mode (0600 while it
// is written).
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := staging.CopyFile(dst, in, 0o600); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// Finish gives directories their modes (owner keeps rwx so the tree can be
// managed later) and flushes the filesystem so a rename that follows
// publishes data that is on disk.
func (s *DirSink) Finish() error {
	s.dropOffered()
	for i := len(s.dirs) - 1; i >= 0; i-- {
		if err := s.root.Chmod(s.dirs[i].Name, s.dirs[i].Mode.Perm()|0o700); err != nil {
			return fmt.Errorf("transfer: %w", err)
		}
	}
	f, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("transfer: syncing %s: %w", s.dir, err)
	}
	return nil
}
