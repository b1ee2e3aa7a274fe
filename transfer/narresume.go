package transfer

// Resume of NARs: a retry of `recv --store` continues a NAR from where a
// failed attempt stopped, as resume.go does for files.
//
// A StoreSink told to keep what it gets (Resume with keep, recv --store
// --keep-partial) writes each big NAR, as its bytes come off the stream and
// before Nix reads them, into a staging directory of its own under TMPDIR
// (nbship-nar-*: locked while the receiver lives, internal/staging), and
// removes it once the NAR is verified. When the transfer fails in the middle
// of such a NAR, the bytes received so far stay there with a state file
// naming the store path, the NAR's size and SHA-256, and how many bytes are
// kept. The next receiver locks the directories failed attempts left (one a
// live receiver holds is not touched), offers the kept prefix of a NAR it
// wants, hashed again from disk, and, when the sender's prefix matches,
// feeds Nix the kept bytes and then the rest from the stream. The NAR's
// every byte, kept or sent, goes through the same hash and the same check
// against the manifest's size and SHA-256 before Nix is given its last
// bytes (StoreSink), so nothing unverified is imported.
//
// What is left: a receiver that succeeds, or that keeps nothing (the last
// attempt), removes its own directory and every leftover it locked; one
// killed leaves an unlocked directory that the next receiver removes.

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nbship/nbship/internal/staging"
	"golang.org/x/sys/unix"
)

// The staging directories of kept NARs, in the receiver's TMPDIR.
const (
	narCreating = ".nbship-nar-new-"
	narPrefix   = "nbship-nar-"
)

// narKeepMin is the smallest NAR worth keeping: a smaller one costs less
// to send again than to write twice.
var narKeepMin int64 = 16 << 20

// narKeep is a StoreSink's resume state.
type narKeep struct {
	keep     bool
	own      *staging.Dir // this attempt's directory (with keep)
	ok       bool         // every path was imported
	streamed bool         // a stream's manifest arrived
	kept     bool         // own holds a prefix and its state
	left     []*leftDir   // failed attempts' directories, locked
	offered  map[string]*kept
	tee      *os.File // the NAR being kept, in own
	teeE     *Entry
	teeN     int64
	buf      []byte
}

// leftDir is a failed (or killed) attempt's directory, locked.
type leftDir struct {
	path string
	lock *os.File
	st   *resumeState // nil: nothing to offer
	used bool         // its prefix moved on
}

// Resume makes the sink keep, when the transfer fails, the part of the NAR
// it was receiving (keep), and continue NARs from the prefixes failed
// attempts left in parent (the receiver's TMPDIR). Its error (the staging
// directory could not be made) leaves the sink working, keeping nothing.
func (s *StoreSink) Resume(keep bool, parent string) error {
	k := &narKeep{keep: keep, offered: map[string]*kept{}}
	s.keep = k
	for _, l := range lockLeftovers(parent) {
		if b, err := readSmall(filepath.Join(l.path, partialState)); err == nil {
			if st, err := parseState(b); err == nil && st.Name != "" {
				l.st = st
			}
		}
		k.left = append(k.left, l)
	}
	if !keep {
		return nil
	}
	d, err := staging.Make(parent, narCreating, narPrefix)
	if err != nil {
		return fmt.Errorf("transfer: keeping NARs for a retry: %w (TMPDIR chooses where)", err)
	}
	k.own = d
	return nil
}

// lockLeftover locks p, a directory of this user that no live receiver
// holds.
func lockLeftover(p string) (*os.File, bool) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false
	}
	fi, err := f.Stat()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if err != nil || !ok || int(st.Uid) != os.Geteuid() || unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		f.Close()
		return nil, false
	}
	return f, true
}

// lockLeftovers locks the directories of kept NARs in parent that are
// this user's and that no live receiver holds.
func lockLeftovers(parent string) []*leftDir {
	ents, _ := os.ReadDir(parent)
	var left []*leftDir
	for _, de := range ents {
		if !strings.HasPrefix(de.Name(), narPrefix) {
			continue
		}
		p := filepath.Join(parent, de.Name())
		if lock, ok := lockLeftover(p); ok {
			left = append(left, &leftDir{path: p, lock: lock})
		}
	}
	return left
}

// Offer implements Resumer: the longest kept prefix of e's NAR, hashed as
// it is on disk now.
func (s *StoreSink) Offer(e *Entry) (int64, [32]byte, bool) {
	k := s.keep
	if k == nil || e.Type != TypeNAR {
		return 0, [32]byte{}, false
	}
	var best *leftDir
	for _, l := range k.left {
		if st := l.st; st != nil && !l.used && st.Name == e.Name && st.Size == e.Size && st.SHA256 == e.SHA256 && (best == nil || st.Length > best.st.Length) {
			best = l
		}
	}
	if best == nil {
		return 0, [32]byte{}, false
	}
	data := filepath.Join(best.path, partialData)
	f, err := os.OpenFile(data, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, [32]byte{}, false
	}
	if k.buf == nil {
		k.buf = make([]byte, 128<<10)
	}
	kp, err := hashPrefix(f, best.st.Length, k.buf)
	if err != nil || f.Truncate(best.st.Length) != nil {
		f.Close()
		return 0, [32]byte{}, false
	}
	kp.path = data
	best.used = true
	k.offered[e.Name] = kp
	return kp.length, [32]byte(kp.h.Sum(nil)), true
}

// ResumeEntry implements Resumer: Create, then the kept prefix given to
// Nix, hashed again as it is read (what Nix gets is what is checked). With
// keep, the prefix moves to this attempt's directory and the rest is
// appended to it.
func (s *StoreSink) ResumeEntry(e *Entry) (io.WriteCloser, hash.Hash, error) {
	k := s.keep
	kp := k.offered[e.Name]
	if kp == nil {
		return nil, nil, fmt.Errorf("transfer: %s was not offered", e.label())
	}
	delete(k.offered, e.Name)
	defer func() {
		if kp.f != k.tee {
			kp.f.Close()
		}
	}()
	w, err := s.create(e)
	if err != nil {
		return nil, nil, err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(h, w), io.NewSectionReader(kp.f, 0, kp.length), k.buf)
	if err != nil {
		return nil, nil, fmt.Errorf("transfer: continuing %s from %s: %w", e.label(), kp.path, err)
	}
	if n != kp.length {
		return nil, nil, fmt.Errorf("transfer: continuing %s: %s shrank", e.label(), kp.path)
	}
	if k.own != nil && k.moveHere(kp) {
		k.tee, k.teeE, k.teeN = kp.f, e, kp.length
	}
	s.notify("continuing %s from the %s a failed attempt kept", e.label(), HumanBytes(kp.length))
	return w, h, nil
}

// moveHere moves a kept prefix into this attempt's directory, to be
// appended to.
func (k *narKeep) moveHere(kp *kept) bool {
	dst := filepath.Join(k.own.Path, partialData)
	if unix.Renameat2(unix.AT_FDCWD, kp.path, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE) != nil {
		return false
	}
	var a, b unix.Stat_t
	if unix.Fstat(int(kp.f.Fd()), &a) != nil || unix.Lstat(dst, &b) != nil || a.Dev != b.Dev || a.Ino != b.Ino {
		return false
	}
	_, err := kp.f.Seek(kp.length, io.SeekStart)
	return err == nil
}

// create starts keeping e, a NAR sent whole, when it is big enough.
func (k *narKeep) create(e *Entry) {
	if kp := k.offered[e.Name]; kp != nil {
		// Offered, and sent whole: the prefix differed.
		kp.f.Close()
		delete(k.offered, e.Name)
	}
	k.dropTee()
	if k.own == nil || e.Size < narKeepMin {
		return
	}
	f, err := os.OpenFile(filepath.Join(k.own.Path, partialData), os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return
	}
	k.tee, k.teeE, k.teeN = f, e, 0
}

// write keeps p, the next bytes of e's NAR. Keeping is best effort: a
// write that fails keeps nothing of this NAR.
func (k *narKeep) write(e *Entry, p []byte) {
	if k == nil || k.tee == nil || k.teeE != e {
		return
	}
	n, err := k.tee.Write(p)
	k.teeN += int64(n)
	if err != nil {
		k.dropTee()
	}
}

// dropTee stops keeping the NAR being kept and removes its bytes.
func (k *narKeep) dropTee() {
	if k == nil || k.tee == nil {
		return
	}
	k.tee.Close()
	k.tee, k.teeE, k.teeN = nil, nil, 0
	os.Remove(filepath.Join(k.own.Path, partialData))
}

// abandon keeps, with keep, the part of the NAR received so far and its
// state, and says so.
func (k *narKeep) abandon() string {
	if k == nil || k.tee == nil {
		return ""
	}
	// No sync: nothing of the state is trusted (a prefix a crash lost
	// is no offer), and a receiver being stopped has seconds to end.
	e, n := k.teeE, k.teeN
	if !k.keep || n <= 0 || n >= e.Size {
		k.dropTee()
		return ""
	}
	k.tee.Close()
	k.tee = nil
	st, _ := json.Marshal(resumeState{Version: partialVersion, Name: e.Name, Size: e.Size, SHA256: e.SHA256, Length: n})
	if os.WriteFile(filepath.Join(k.own.Path, partialState), st, 0o600) == nil {
		k.kept = true
		return fmt.Sprintf("kept %s of %s's NAR in %s for a retry", HumanBytes(n), e.label(), k.own.Path)
	}
	return ""
}

// end removes what no retry will use: everything when the import
// succeeded or nothing is kept, else this attempt's directory unless it
// holds a prefix, and the leftovers whose prefix moved on. It releases
// the locks.
func (k *narKeep) end() {
	if k == nil {
		return
	}
	for name, kp := range k.offered {
		kp.f.Close()
		delete(k.offered, name)
	}
	if !k.kept {
		k.dropTee()
	}
	all := k.ok || !k.keep
	if k.own != nil {
		if all || !k.kept {
			os.RemoveAll(k.own.Path)
		}
		k.own.Release()
		k.own = nil
	}
	for _, l := range k.left {
		// A receiver that never got a stream (the sender could not reach
		// it, say) leaves the prefixes for the one that will.
		if all && k.streamed || l.used || l.st == nil {
			os.RemoveAll(l.path)
		}
		l.lock.Close()
	}
	k.left = nil
}

// SweepKeptNARs removes the NARs failed attempts kept in parent (the
// receiver's TMPDIR) for a retry that will not come: every directory of
// this user's that no live receiver holds. It returns the paths removed.
func SweepKeptNARs(parent string) []string {
	var removed []string
	for _, l := range lockLeftovers(parent) {
		if os.RemoveAll(l.path) == nil {
			removed = append(removed, l.path)
		}
		l.lock.Close()
	}
	return removed
}
