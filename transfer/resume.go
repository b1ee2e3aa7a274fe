package transfer

// Resume: a retry continues a file from where a failed attempt stopped.
//
// A receiver told to keep what it got (DirSink.Resume, recv --keep-partial)
// leaves, when a transfer fails in the middle of a file, that file's bytes
// under partialData in its staging directory and a state file (partialState)
// naming the entry's size and SHA-256 from the manifest and how many bytes
// are there. The next attempt's receiver, given the directories failed
// attempts left, offers in its want the kept prefix of each entry whose size
// and SHA-256 match a state file: the entry, the prefix's length and the
// SHA-256 of the prefix as it reads it now from disk. The sender hashes the
// same prefix of its own file (reading is faster than the link) and, at the
// start of that entry's data, says in one byte whether it sends only the
// rest (the prefixes match) or the whole entry. Either way the receiver
// hashes every byte of the file it ends up with, the kept ones included,
// and checks the whole against the manifest as for any entry.
//
// Nothing in the state file is trusted: a hash state saved beside the data
// would let whoever can write to the staging directory between attempts
// change the kept bytes under a state that still "verifies", so the prefix
// is hashed again from the bytes that will be published. A state that does
// not parse, names another entry, or claims more bytes than the file has is
// no offer: the entry is sent whole.

import (
	"bytes"
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
	"syscall"

	"golang.org/x/sys/unix"
)

// The kept prefix and its state, at the top of a failed attempt's staging
// directory. Entry names never contain a backslash (CheckName), so these
// names meet no entry; image.Slot.Leftovers does not hash them.
const (
	partialData  = `.nbship\partial`
	partialState = `.nbship\partial.json`
)

// partialVersion is the state file's format.
const partialVersion = 1

// maxState bounds what is read of a state file.
const maxState = 4 << 10

// resumeState is the state file: the entry it is a prefix of (its size
// and SHA-256 from the manifest; for a NAR, its store path's base name
// too) and how many of its bytes are kept.
type resumeState struct {
	Version int    `json:"version"`
	Name    string `json:"name,omitempty"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	Length  int64  `json:"length"`
}

// parseState reads a state file; any flaw is an error (and no resume).
func parseState(b []byte) (*resumeState, error) {
	if len(b) > maxState {
		return nil, errors.New("state file too large")
	}
	var s resumeState
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the state")
	}
	switch {
	case s.Version != partialVersion:
		return nil, fmt.Errorf("state version %d is not %d", s.Version, partialVersion)
	case s.Size <= 0 || s.Length <= 0 || s.Length >= s.Size:
		return nil, fmt.Errorf("kept length %d of a %d-byte entry", s.Length, s.Size)
	}
	if sum, err := hex.DecodeString(s.SHA256); err != nil || len(sum) != sha256.Size {
		return nil, errors.New("bad SHA-256")
	}
	return &s, nil
}

// An offer is, in the want, a kept prefix of an entry: its index, length
// and SHA-256.
type offer struct {
	index  int
	length int64
	sum    [32]byte
}

const offerSize = 4 + 8 + 32

// appendOffers puts offers after the want's bitmap.
func appendOffers(want []byte, offers []offer) []byte {
	for _, o := range offers {
		want = binary.BigEndian.AppendUint32(want, uint32(o.index))
		want = binary.BigEndian.AppendUint64(want, uint64(o.length))
		want = append(want, o.sum[:]...)
	}
	return want
}

// parseWant splits a want for m into its bitmap and offers, checking that
// every offer is of a wanted file or NAR entry, in order, once, and
// shorter than the entry.
func parseWant(p []byte, m *Manifest) ([]byte, []offer, error) {
	n := (len(m.Entries) + 7) / 8
	if len(p) < n || (len(p)-n)%offerSize != 0 {
		return nil, nil, fmt.Errorf("transfer: protocol error: want of %d bytes for %d entries", len(p), len(m.Entries))
	}
	bitmap, rest := p[:n], p[n:]
	var offers []offer
	last := -1
	for len(rest) > 0 {
		o := offer{
			index:  int(binary.BigEndian.Uint32(rest)),
			length: int64(binary.BigEndian.Uint64(rest[4:])),
		}
		copy(o.sum[:], rest[12:offerSize])
		rest = rest[offerSize:]
		if o.index <= last || o.index >= len(m.Entries) {
			return nil, nil, fmt.Errorf("transfer: protocol error: offer of entry %d out of order or range", o.index)
		}
		e := &m.Entries[o.index]
		if !e.hasData() || !wanted(bitmap, o.index) || o.length <= 0 || o.length >= e.Size {
			return nil, nil, fmt.Errorf("transfer: protocol error: offer of %d bytes of entry %d, which is not a wanted file or NAR longer than that", o.length, o.index)
		}
		last = o.index
		offers = append(offers, o)
	}
	return bitmap, offers, nil
}

// What the sender says at the start of an offered entry's data.
const (
	resumeWhole = 0 // the prefixes differ: the whole entry follows
	resumeRest  = 1 // the rest follows, after the offered prefix
)

// Resumer is a Sink that may hold the start of a file from a failed
// attempt (DirSink with Resume).
type Resumer interface {
	// Offer reads and hashes the kept prefix of e, if there is one.
	Offer(e *Entry) (length int64, sum [32]byte, ok bool)
	// ResumeEntry is Create for an offered entry whose prefix the sender
	// confirmed: a writer that appends to the prefix, and the hash of the
	// prefix to go on from. An offered entry the sender sends whole gets
	// Create.
	ResumeEntry(e *Entry) (io.WriteCloser, hash.Hash, error)
}

// kept is a prefix this attempt offered: the file, open, and its hash.
type kept struct {
	f      *os.File
	path   string
	length int64
	h      hash.Hash
}

// keptPartial is a failed attempt's prefix: where its data is, and its
// state.
type keptPartial struct {
	data string
	st   *resumeState
}

// Resume makes the sink keep, when the transfer fails (Abandon) and keep
// is set, the file it was writing for the next attempt, and continue
// files from the prefixes failed attempts left in dirs.
func (s *DirSink) Resume(keep bool, dirs []string) {
	s.keepPartial = keep
	for _, d := range dirs {
		b, err := readSmall(filepath.Join(d, partialState))
		if err != nil {
			continue
		}
		st, err := parseState(b)
		if err != nil {
			continue
		}
		s.partials = append(s.partials, keptPartial{data: filepath.Join(d, partialData), st: st})
	}
}

func readSmall(p string) ([]byte, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, maxState+1))
}

// Offer implements Resumer: the longest kept prefix of an entry with e's
// size and SHA-256, hashed as it is on disk now.
func (s *DirSink) Offer(e *Entry) (int64, [32]byte, bool) {
	var best *keptPartial
	for i := range s.partials {
		p := &s.partials[i]
		if p.st.Size == e.Size && p.st.SHA256 == e.SHA256 && (best == nil || p.st.Length > best.st.Length) {
			best = p
		}
	}
	if best == nil {
		return 0, [32]byte{}, false
	}
	f, err := os.OpenFile(best.data, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, [32]byte{}, false
	}
	k, err := hashPrefix(f, best.st.Length, s.hashBuf())
	if err != nil || f.Truncate(best.st.Length) != nil {
		f.Close()
		return 0, [32]byte{}, false
	}
	k.path = best.data
	if s.offered == nil {
		s.offered = map[string]*kept{}
	}
	s.offered[e.Name] = k
	var sum [32]byte
	copy(sum[:], k.h.Sum(nil))
	return k.length, sum, true
}

// hashPrefix hashes the first n bytes of f, a regular file at least that
// long.
func hashPrefix(f *os.File, n int64, buf []byte) (*kept, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() < n {
		return nil, errors.New("not a regular file as long as its state says")
	}
	// A file with another name too (a hard link to a published file,
	// say) is not truncated and appended to.
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink != 1 {
		return nil, errors.New("not a file of its own")
	}
	h := sha256.New()
	got, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, n), buf)
	if err != nil {
		return nil, err
	}
	if got != n {
		return nil, io.ErrUnexpectedEOF
	}
	return &kept{f: f, length: n, h: h}, nil
}

func (s *DirSink) hashBuf() []byte {
	if s.buf == nil {
		s.buf = make([]byte, 128<<10)
	}
	return s.buf
}

// ResumeEntry implements Resumer: the prefix moves from the failed attempt's
// directory to the entry's place in this one, and must still be the file
// that was hashed.
func (s *DirSink) ResumeEntry(e *Entry) (io.WriteCloser, hash.Hash, error) {
	k := s.offered[e.Name]
	if k == nil {
		return nil, nil, fmt.Errorf("transfer: %s was not offered", e.Name)
	}
	delete(s.offered, e.Name)
	dst := filepath.Join(s.dir, e.Name) // e.Name is validated and its parents are ours
	if err := unix.Renameat2(unix.AT_FDCWD, k.path, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		k.f.Close()
		return nil, nil, fmt.Errorf("transfer: continuing %s from %s: %w", e.Name, k.path, err)
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(k.f.Fd()), &a) != nil || unix.Lstat(dst, &b) != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		k.f.Close()
		return nil, nil, fmt.Errorf("transfer: the kept start of %s was replaced while it was continued", e.Name)
	}
	if _, err := k.f.Seek(k.length, io.SeekStart); err != nil {
		k.f.Close()
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	f := &sinkFile{File: k.f, root: s.root, e: e, sink: s, n: k.length}
	s.cur = f
	return f, k.h, nil
}

// dropOffered closes the prefixes offered and not continued; their files
// stay where the failed attempt left them (removed with its directory).
func (s *DirSink) dropOffered() {
	for name, k := range s.offered {
		k.f.Close()
		delete(s.offered, name)
	}
}

// Abandon implements Abandoner: with Resume(true, …), the file being
// written when the transfer failed is kept with its state for a retry.
func (s *DirSink) Abandon() {
	s.dropOffered()
	f := s.cur
	s.cur = nil
	if f == nil {
		return
	}
	var serr error
	if !f.closed {
		serr = f.syncDone()
		f.File.Close()
		f.closed = true
	}
	if !s.keepPartial || serr != nil || f.n <= 0 || f.n >= f.e.Size {
		return
	}
	st, _ := json.Marshal(resumeState{Version: partialVersion, Size: f.e.Size, SHA256: f.e.SHA256, Length: f.n})
	if s.root.Rename(f.e.Name, partialData) != nil || s.root.Chmod(partialData, 0o600) != nil {
		return
	}
	s.root.WriteFile(partialState, st, 0o600)
}
