package transfer

// Nix store paths in the stream: the manifest checks of "nar" entries, and
// the receiving side, StoreSink, which lands each verified NAR in the local
// store through one `nix-store --import` fed in Nix's export format.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// narNames is the set of the manifest's store path names.
func (m *Manifest) narNames() map[string]bool {
	names := map[string]bool{}
	for i := range m.Entries {
		if m.Entries[i].Type == TypeNAR {
			names[m.Entries[i].Name] = true
		}
	}
	return names
}

// External returns the store paths (base names) that the manifest's entries
// refer to but does not carry: the receiver must have them already.
func (m *Manifest) External() []string {
	names := m.narNames()
	seen := map[string]bool{}
	var ext []string
	for i := range m.Entries {
		for _, r := range m.Entries[i].References {
			if !names[r] && !seen[r] {
				seen[r] = true
				ext = append(ext, r)
			}
		}
	}
	slices.Sort(ext)
	return ext
}

// validateNAR checks a store path entry: its name, size, hash, references
// (each a store path name, and each either the path itself, one sent
// before it, or one not in the stream at all, which the sink must find
// valid) and deriver. earlier holds the entries before it.
func validateNAR(e *Entry, earlier map[string]string, all map[string]bool) error {
	refuse := func(format string, a ...any) error {
		return &ManifestError{Name: e.Name, Msg: fmt.Sprintf(format, a...)}
	}
	if err := CheckStoreName(e.Name); err != nil {
		return refuse("not a store path name: %v", err)
	}
	if e.Mode != 0 {
		return refuse("a store path entry with a mode (%v)", e.Mode)
	}
	if e.Size <= 0 || e.Size > maxTotal {
		return refuse("NAR size %d out of range", e.Size)
	}
	b, err := hex.DecodeString(e.SHA256)
	if err != nil || len(b) != 32 || strings.ToLower(e.SHA256) != e.SHA256 {
		return refuse("sha256 is not 64 lowercase hex digits")
	}
	copy(e.sum[:], b)
	seen := make(map[string]bool, len(e.References))
	for _, r := range e.References {
		if err := CheckStoreName(r); err != nil {
			return refuse("reference %q is not a store path name: %v", r, err)
		}
		if seen[r] {
			return refuse("reference %s is listed twice", r)
		}
		seen[r] = true
		if r != e.Name && earlier[r] != TypeNAR && all[r] {
			return refuse("refers to %s, which comes later in the stream (store paths must come in dependency order)", r)
		}
	}
	if e.Deriver != "" {
		if err := CheckStoreName(e.Deriver); err != nil || !strings.HasSuffix(e.Deriver, ".drv") {
			return refuse("deriver %q is not the name of a .drv store path", e.Deriver)
		}
	}
	return nil
}

// ManifestChecker is a Sink that vets the whole manifest before saying
// what it wants: a sink that takes store paths must implement it (and
// refuse what it cannot take); a sink that does not is never given any.
type ManifestChecker interface {
	CheckManifest(ctx context.Context, m *Manifest) error
}

// Verifier is a Sink told that an entry's bytes, just written through
// Create, matched their announced size and SHA-256.
type Verifier interface {
	Verified(ctx context.Context, e *Entry) error
}

// Abandoner is a Sink told that the transfer failed, before the sender is
// told (after which the sender, and whatever started both ends, may stop
// everything): it settles what it has committed to so far.
type Abandoner interface {
	Abandon()
}

// StoreWriter is the receiving Nix store as a StoreSink needs it. Paths are
// full store paths.
type StoreWriter interface {
	// Invalid returns which of paths are not valid in the store.
	Invalid(ctx context.Context, paths []string) (map[string]bool, error)
	// Import starts an import that reads Nix's export format.
	Import(ctx context.Context) (Importer, error)
}

// Importer is a running import (nix-store --import). A path is imported
// once its whole record is written; the records of the paths before it
// stay imported whatever happens later.
type Importer interface {
	io.Writer
	// Close ends the input and waits for the import; an error means that
	// not every record written was imported.
	Close() error
	// Kill stops the import at once: a record not completely written is
	// not imported.
	Kill()
}

// exportMagic ends the NAR of each record of Nix's export format.
const exportMagic = 0x4558494e

// StoreSink imports store paths into a Nix store. Each NAR is written to a
// temporary file (in a private directory, removed by Close) while the
// receiver hashes it; only once its size and SHA-256 matched is it fed,
// hashed again on the way, to the import, so neither a NAR that failed its
// check nor any path after it is imported, and memory stays bounded
// whatever the size of a path.
type StoreSink struct {
	st      StoreWriter
	tmp     string
	paths   []string        // every path of the manifest, for Confirm
	invalid map[string]bool // paths the store lacks: the ones wanted
	cur     string          // temporary file of the entry being received
	imp     Importer
	partial bool // the import has an incomplete record
	buf     []byte
}

// NewStoreSink makes a sink importing into st, with its temporary files in
// a new private directory under dir ("" for the default).
func NewStoreSink(st StoreWriter, dir string) (*StoreSink, error) {
	tmp, err := os.MkdirTemp(dir, "nbship-nar-")
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	if err := os.Chmod(tmp, 0o700); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("transfer: %w", err)
	}
	return &StoreSink{st: st, tmp: tmp, buf: make([]byte, 256<<10)}, nil
}

// CheckManifest refuses anything but store paths, and store paths that
// refer to a path neither sent before them nor valid here; it learns which
// paths the store lacks.
func (s *StoreSink) CheckManifest(ctx context.Context, m *Manifest) error {
	for i := range m.Entries {
		if m.Entries[i].Type != TypeNAR {
			return &ManifestError{Msg: "the sender sent files, and this receiver imports Nix store paths (receive files with recv --dest)"}
		}
	}
	ext := m.External()
	isExt := make(map[string]bool, len(ext))
	for _, r := range ext {
		isExt[r] = true
	}
	ask := make([]string, 0, len(m.Entries)+len(ext))
	for i := range m.Entries {
		ask = append(ask, StoreDir+"/"+m.Entries[i].Name)
	}
	s.paths = slices.Clone(ask)
	for _, r := range ext {
		ask = append(ask, StoreDir+"/"+r)
	}
	invalid, err := s.st.Invalid(ctx, ask)
	if err != nil {
		return err
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		for _, r := range e.References {
			if p := StoreDir + "/" + r; isExt[r] && invalid[p] {
				return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("refers to %s, which is neither sent before it nor valid in this store", p)}
			}
		}
	}
	s.invalid = invalid
	return nil
}

// Want is true for the paths the store lacks.
func (s *StoreSink) Want(e *Entry) bool { return s.invalid[StoreDir+"/"+e.Name] }

// Mkdir refuses: a store sink takes only store paths.
func (s *StoreSink) Mkdir(e *Entry) error {
	return fmt.Errorf("transfer: %s: a directory entry in a stream of store paths", e.Name)
}

// Create starts the temporary file of e's NAR.
func (s *StoreSink) Create(e *Entry) (io.WriteCloser, error) {
	f, err := os.CreateTemp(s.tmp, "nar-")
	if err != nil {
		return nil, fmt.Errorf("transfer: %w", err)
	}
	s.cur = f.Name()
	return f, nil
}

// Reuse accepts a path the store already has.
func (s *StoreSink) Reuse(e *Entry) error { return nil }

// Verified feeds the NAR just received, whose size and hash matched, to the
// import as one export record, and removes its temporary file. The NAR is
// hashed again as it is read back: the record's trailer, without which Nix
// does not import the path, is written only if it still matches.
func (s *StoreSink) Verified(ctx context.Context, e *Entry) error {
	path := s.cur
	s.cur = ""
	defer os.Remove(path)
	if s.imp == nil {
		imp, err := s.st.Import(ctx)
		if err != nil {
			return err
		}
		s.imp = imp
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	defer f.Close()
	s.partial = true
	if err := writeNum(s.imp, 1); err != nil {
		return s.importErr(e, err)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(s.imp, h), io.LimitReader(f, e.Size+1), s.buf)
	if err != nil {
		return s.importErr(e, err)
	}
	if n != e.Size || [32]byte(h.Sum(nil)) != e.sum {
		return fmt.Errorf("transfer: %s/%s: the NAR changed on disk after it was verified; not imported", StoreDir, e.Name)
	}
	if err := writeTrailer(s.imp, e); err != nil {
		return s.importErr(e, err)
	}
	s.partial = false
	return nil
}

func (s *StoreSink) importErr(e *Entry, err error) error {
	return fmt.Errorf("transfer: importing %s/%s: %w", StoreDir, e.Name, err)
}

// Finish ends the import and waits until every path fed is in the store.
func (s *StoreSink) Finish() error {
	if s.imp == nil {
		return nil
	}
	imp := s.imp
	s.imp = nil
	if err := writeNum(imp, 0); err != nil {
		imp.Kill()
		return fmt.Errorf("transfer: ending the import: %w", err)
	}
	if err := imp.Close(); err != nil {
		return fmt.Errorf("transfer: %w", err)
	}
	return nil
}

// Confirm checks that every path of the stream is now valid in the store.
func (s *StoreSink) Confirm(ctx context.Context) error {
	invalid, err := s.st.Invalid(ctx, s.paths)
	if err != nil {
		return err
	}
	for _, p := range s.paths {
		if invalid[p] {
			return fmt.Errorf("transfer: %s is not valid in this store after the import", p)
		}
	}
	return nil
}

// Abandon lets the import finish the paths fed completely (they were
// verified) and stops it before the one being fed, if any: run before the
// sender learns of a failure, so that the paths before a bad one are in
// the store whatever happens to this process next.
func (s *StoreSink) Abandon() {
	s.endImport()
}

func (s *StoreSink) endImport() error {
	if s.imp == nil {
		return nil
	}
	imp := s.imp
	s.imp = nil
	if s.partial {
		imp.Kill()
		return nil
	}
	if err := writeNum(imp, 0); err != nil {
		imp.Kill()
		return err
	}
	return imp.Close()
}

// Close ends an import that is still running (the paths completely fed stay
// imported; a partly fed one is not) and removes the temporary files.
func (s *StoreSink) Close() error {
	err := s.endImport()
	if rerr := os.RemoveAll(s.tmp); err == nil && rerr != nil {
		err = rerr
	}
	return err
}

// writeNum writes a number as Nix serialises it: 64-bit little-endian.
func writeNum(w io.Writer, n uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	_, err := w.Write(b[:])
	return err
}

// appendStr appends a string as Nix serialises it: its length, its bytes,
// zeros up to a multiple of 8.
func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

// writeTrailer writes what follows a NAR in an export record: the magic,
// the path, its references, its deriver and no signature.
func writeTrailer(w io.Writer, e *Entry) error {
	b := binary.LittleEndian.AppendUint64(nil, exportMagic)
	b = appendStr(b, StoreDir+"/"+e.Name)
	refs := slices.Clone(e.References)
	slices.Sort(refs)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(refs)))
	for _, r := range refs {
		b = appendStr(b, StoreDir+"/"+r)
	}
	deriver := ""
	if e.Deriver != "" {
		deriver = StoreDir + "/" + e.Deriver
	}
	b = appendStr(b, deriver)
	b = binary.LittleEndian.AppendUint64(b, 0)
	_, err := w.Write(b)
	return err
}

// WriteExport writes one record of Nix's export format (the 1 that
// announces it, the NAR read from nar, the trailer) for the store path
// named name; the stream's final 0 is the caller's. Tests use it to make
// paths with references and derivers without building anything.
func WriteExport(w io.Writer, name string, nar io.Reader, references []string, deriver string) error {
	if err := writeNum(w, 1); err != nil {
		return err
	}
	if _, err := io.Copy(w, nar); err != nil {
		return err
	}
	return writeTrailer(w, &Entry{Name: name, References: references, Deriver: deriver})
}
