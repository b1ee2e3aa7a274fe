package transfer

// Nix store paths in the stream: the manifest checks of "nar" entries, and
// the receiving side, StoreSink, which lands each verified NAR in the local
// store through one `nix-store --serve --write` (package nixstore speaks
// to it).

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/nbship/nbship/nixstore"
)

// Limits on a store path's signatures and content address in a manifest.
const (
	maxSigs  = 64
	maxCALen = 1024
)

// holdBack is how many of a NAR's last bytes wait for its check: until
// they are written Nix cannot finish the NAR, so cannot add the path.
const holdBack = 4096

// pathInfo is e's metadata as the store has it: full paths.
func (e *Entry) pathInfo() *nixstore.PathInfo {
	info := &nixstore.PathInfo{Path: nixstore.Dir + "/" + e.Name, NARHash: e.sum, NARSize: e.Size, CA: e.CA, Sigs: e.Sigs}
	if e.Deriver != "" {
		info.Deriver = nixstore.Dir + "/" + e.Deriver
	}
	for _, r := range e.References {
		info.References = append(info.References, nixstore.Dir+"/"+r)
	}
	return info
}

// Sign adds k's signature to each store path of the source that does not
// carry it yet, as nix store sign would in the sender's store (which is
// left as it was).
func (s *Source) Sign(k *nixstore.SigningKey) {
	for i := range s.Manifest.Entries {
		e := &s.Manifest.Entries[i]
		if e.Type != TypeNAR {
			continue
		}
		sig := k.Sign(e.pathInfo())
		if !slices.Contains(e.Sigs, sig) {
			e.Sigs = append(e.Sigs, sig)
		}
	}
}

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
	if err := nixstore.CheckName(e.Name); err != nil {
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
		if err := nixstore.CheckName(r); err != nil {
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
		if err := nixstore.CheckName(e.Deriver); err != nil || !strings.HasSuffix(e.Deriver, ".drv") {
			return refuse("deriver %q is not the name of a .drv store path", e.Deriver)
		}
	}
	if len(e.Sigs) > maxSigs {
		return refuse("%d signatures, more than %d", len(e.Sigs), maxSigs)
	}
	for i, s := range e.Sigs {
		if err := nixstore.CheckSig(s); err != nil {
			return refuse("signature %q: %v", s, err)
		}
		if slices.Contains(e.Sigs[:i], s) {
			return refuse("signature %q is listed twice", s)
		}
	}
	if e.CA != "" {
		if len(e.CA) > maxCALen || !strings.HasPrefix(e.CA, "text:") && !strings.HasPrefix(e.CA, "fixed:") || strings.ContainsAny(e.CA, "\x00\n") {
			return refuse("content address %q is not text:... or fixed:...", e.CA)
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
	// Import starts an import speaking Nix's serve protocol
	// (nix-store --serve --write).
	Import(ctx context.Context) (Importer, error)
}

// Importer is a running nix-store --serve --write: Write is its input, Read
// its output. A path it was given completely is added once it replied for
// it; a path not given completely is never added.
type Importer interface {
	io.ReadWriter
	// CloseWrite ends its input: it finishes the paths it was given, then
	// exits.
	CloseWrite() error
	// Wait waits for it to exit, after its output was read to the end; an
	// error means not every path given was added.
	Wait() error
	// Kill stops it at once.
	Kill()
}

// StoreSink imports store paths into a Nix store through one long-lived
// nix-store --serve --write. Each NAR streams into it as it arrives (Nix
// writes it out under the store, unregistered, as it reads), while the
// receiver hashes it; the NAR's last bytes are held back until its size
// and SHA-256 matched the announced narSize and narHash, and Nix, given
// the same narHash and narSize, checks them again before it registers the
// path. So a NAR that fails the check is never added (Nix is stopped
// before it has the whole NAR), no path after it is sent to Nix, and
// memory stays bounded whatever the size of a path. Between the two, a
// spool (spool.go) lets the network run ahead of Nix. The same nix-store,
// started before the manifest arrives (Prepare), first says which paths the
// store lacks, and keeps the ones it has from the garbage collector.
type StoreSink struct {
	// Trust is what the store demands of the paths it is given; nil: asked
	// of the store (nixstore.Store.Trust) when it can say, else nothing. A
	// path it would refuse is refused with the manifest, before any data
	// moves.
	Trust *nixstore.Trust
	// Substitute: the store first tries its substituters for the paths it
	// lacks, and the ones it gets are not wanted from the sender.
	Substitute bool
	// Notify, if set, is told of what the sink did on its own (the paths
	// substituted) and of what it could not check.
	Notify func(msg string)

	substituted      int           // paths of the manifest the store substituted
	substitutedBytes int64         // their NAR sizes
	trusting         chan struct{} // closed once Prepare learned the store's trust (or failed to)
	trustErr         error

	st      StoreWriter
	paths   []string        // every path of the manifest, for Confirm
	invalid map[string]bool // paths the store lacks: the ones wanted
	imp     Importer
	out     *spool     // what goes to imp after the greeting
	cutAt   int64      // where in out the path given in part starts
	cur     *narWriter // the NAR being received
	fed     int        // paths given to Nix completely
	partial bool       // a path given to Nix in part
	replies *replies
	opening chan struct{} // closed once Prepare has started imp (or failed to)
	openErr error
	keep    *narKeep // Resume (narresume.go)
}

// replies counts nix-store's replies, one per path added.
type replies struct {
	mu   sync.Mutex
	cond sync.Cond
	n    int
	end  error // why they ended, once they have
}

// read counts the replies on r until it ends.
func (rs *replies) read(r io.Reader) {
	var b [8]byte
	for {
		_, err := io.ReadFull(r, b[:])
		if err == nil && binary.LittleEndian.Uint64(b[:]) != 1 {
			err = fmt.Errorf("nix-store --serve replied %d to an added path, not 1", binary.LittleEndian.Uint64(b[:]))
		}
		rs.mu.Lock()
		if err != nil {
			rs.end = err
			rs.cond.Broadcast()
			rs.mu.Unlock()
			return
		}
		rs.n++
		rs.cond.Broadcast()
		rs.mu.Unlock()
	}
}

// wait waits for n replies, or for their end.
func (rs *replies) wait(n int) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rs.n < n && rs.end == nil {
		rs.cond.Wait()
	}
}

// drain waits for their end and returns how many came and why they ended.
func (rs *replies) drain() (int, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rs.end == nil {
		rs.cond.Wait()
	}
	return rs.n, rs.end
}

// NewStoreSink makes a sink importing into st.
func NewStoreSink(st StoreWriter) *StoreSink {
	return &StoreSink{st: st}
}

// CheckManifest refuses anything but store paths, and store paths that
// refer to a path neither sent before them nor valid here; it learns which
// paths the store lacks.
func (s *StoreSink) CheckManifest(ctx context.Context, m *Manifest) error {
	if s.keep != nil {
		s.keep.streamed = true
	}
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
		ask = append(ask, nixstore.Dir+"/"+m.Entries[i].Name)
	}
	s.paths = slices.Clone(ask)
	for _, r := range ext {
		ask = append(ask, nixstore.Dir+"/"+r)
	}
	// The store is asked what it lacks through the import (started by
	// Prepare while the manifest was on its way): one nix-store, greeted
	// before any data moves, so a store that cannot import is refused now.
	imp, err := s.opened(ctx)
	var invalid map[string]bool
	if err == nil {
		invalid, err = queryInvalid(imp, ask)
		if err == nil && s.Substitute {
			invalid, err = s.substitute(imp, m, ask, invalid)
		}
		if err != nil {
			s.imp = nil
		}
	} else if inv, qerr := s.st.Invalid(ctx, ask); qerr == nil && !wants(m, inv) {
		// It cannot import, and has every path: that is not needed.
		invalid, err = inv, nil
	}
	if err == nil {
		err = s.refer(m, isExt, invalid)
	}
	if err == nil {
		err = s.checkTrust(m, invalid)
	}
	if err != nil {
		s.endImport()
		return err
	}
	s.invalid = invalid
	if wants(m, invalid) {
		return s.start(ctx)
	}
	return s.endImport()
}

// wants reports whether any of m's paths is invalid.
func wants(m *Manifest, invalid map[string]bool) bool {
	for i := range m.Entries {
		if invalid[nixstore.Dir+"/"+m.Entries[i].Name] {
			return true
		}
	}
	return false
}

// refer refuses a path referring to one neither sent before it nor valid.
func (s *StoreSink) refer(m *Manifest, isExt, invalid map[string]bool) error {
	for i := range m.Entries {
		e := &m.Entries[i]
		for _, r := range e.References {
			if p := nixstore.Dir + "/" + r; isExt[r] && invalid[p] {
				return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("refers to %s, which is neither sent before it nor valid in this store", p)}
			}
		}
	}
	return nil
}

// Want is true for the paths the store lacks.
func (s *StoreSink) Want(e *Entry) bool { return s.invalid[nixstore.Dir+"/"+e.Name] }

// Mkdir refuses: a store sink takes only store paths.
func (s *StoreSink) Mkdir(e *Entry) error {
	return refused("%s: a directory entry in a stream of store paths", e.Name)
}

// start starts the import and greets it; a goroutine counts its replies.
func (s *StoreSink) start(ctx context.Context) error {
	imp, err := s.opened(ctx)
	if err != nil {
		return err
	}
	out, err := newSpool("", imp)
	if err != nil {
		s.imp = nil
		imp.Kill()
		io.Copy(io.Discard, imp)
		imp.Wait()
		return err
	}
	s.out = out
	s.replies = &replies{}
	s.replies.cond.L = &s.replies.mu
	go s.replies.read(imp)
	return nil
}

// Prepare starts Nix's import now, in the background: nix-store takes
// 60-100 ms to start and greet, which the wait for the stream's manifest
// hides. Close stops it if the stream never comes.
func (s *StoreSink) Prepare(ctx context.Context) {
	s.opening = make(chan struct{})
	go func() {
		defer close(s.opening)
		s.imp, s.openErr = s.open(ctx)
	}()
	s.trusting = make(chan struct{})
	go func() {
		defer close(s.trusting)
		if t, ok := s.st.(truster); ok && s.Trust == nil {
			s.Trust, s.trustErr = t.Trust(ctx)
		}
	}()
}

// truster is a store that can say what it demands of the paths it is
// given (nixstore.Store).
type truster interface {
	Trust(ctx context.Context) (*nixstore.Trust, error)
}

// Substituted returns how many of the manifest's paths the store
// substituted, and their NAR bytes.
func (s *StoreSink) Substituted() (int, int64) { return s.substituted, s.substitutedBytes }

func (s *StoreSink) notify(format string, a ...any) {
	if s.Notify != nil {
		s.Notify(fmt.Sprintf(format, a...))
	}
}

// checkTrust refuses the first path the store lacks and would not take.
func (s *StoreSink) checkTrust(m *Manifest, invalid map[string]bool) error {
	if s.trusting != nil {
		<-s.trusting
	}
	if s.trustErr != nil {
		s.notify("could not learn what this store demands of imported paths (%v); Nix checks each path as it is added", s.trustErr)
		return nil
	}
	if s.Trust == nil {
		return nil
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if !invalid[nixstore.Dir+"/"+e.Name] {
			continue
		}
		if err := s.Trust.Check(e.pathInfo()); err != nil {
			return &ManifestError{Msg: err.Error()}
		}
	}
	return nil
}

// substitute asks the store to substitute the paths of ask it lacks, and
// returns which it still lacks.
func (s *StoreSink) substitute(imp Importer, m *Manifest, ask []string, invalid map[string]bool) (map[string]bool, error) {
	var missing []string
	for _, p := range ask {
		if invalid[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return invalid, nil
	}
	still, err := queryPaths(imp, missing, true)
	if err != nil {
		return nil, err
	}
	for i := range m.Entries {
		p := nixstore.Dir + "/" + m.Entries[i].Name
		if invalid[p] && !still[p] {
			s.substituted++
			s.substitutedBytes += m.Entries[i].Size
		}
	}
	for _, p := range missing {
		if !still[p] {
			delete(invalid, p)
		}
	}
	s.notify("%d of the %d store paths it lacked (%s of NARs) came from this host's substituters", s.substituted, len(missing), HumanBytes(s.substitutedBytes))
	return invalid, nil
}

// opened returns the greeted import, started by Prepare or now.
func (s *StoreSink) opened(ctx context.Context) (Importer, error) {
	if s.opening == nil {
		s.Prepare(ctx)
	}
	<-s.opening
	return s.imp, s.openErr
}

// open starts an import and greets it.
func (s *StoreSink) open(ctx context.Context) (Importer, error) {
	imp, err := s.st.Import(ctx)
	if err != nil {
		return nil, err
	}
	if err := nixstore.Greet(imp); err != nil {
		return nil, serveFailed(imp, err)
	}
	return imp, nil
}

// serveFailed stops imp after err and returns the error to report: its
// own words, when it failed.
func serveFailed(imp Importer, err error) error {
	imp.Kill()
	io.Copy(io.Discard, imp)
	if werr := imp.Wait(); werr != nil {
		return werr // the store's: "nixstore: nix-store --serve: ..."
	}
	return fmt.Errorf("transfer: nix-store --serve: %w", err)
}

// queryInvalid asks imp which of paths are not valid, adding the valid
// ones to its temporary roots: the garbage collector leaves them alone
// until the import ends.
func queryInvalid(imp Importer, paths []string) (map[string]bool, error) {
	return queryPaths(imp, paths, false)
}

// queryPaths is queryInvalid; with substitute, nix-store first
// substitutes what it can of the paths it lacks (nixstore.QueryInvalid);
// after an odd reply it stops imp.
func queryPaths(imp Importer, paths []string, substitute bool) (map[string]bool, error) {
	invalid, err := nixstore.QueryInvalid(imp, paths, substitute)
	if err != nil {
		return nil, serveFailed(imp, err)
	}
	return invalid, nil
}

// NixStore is the local Nix store (nixstore.Store) as the stream's ends
// use it: a StoreReader and a StoreWriter.
type NixStore struct {
	nixstore.Store
}

// Dump starts the store's session (nixstore.Store.Dump).
func (n *NixStore) Dump(ctx context.Context) (NARDump, error) {
	s, err := n.Store.Dump(ctx)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Import starts the store's import (nixstore.Store.Import).
func (n *NixStore) Import(ctx context.Context) (Importer, error) {
	im, err := n.Store.Import(ctx)
	if err != nil {
		return nil, err
	}
	return im, nil
}

// Create gives Nix the command that adds e, with e's metadata, and returns
// the writer of its NAR (which, with Resume's keep, also keeps it).
func (s *StoreSink) Create(e *Entry) (io.WriteCloser, error) {
	w, err := s.create(e)
	if err == nil && s.keep != nil {
		s.keep.create(e)
	}
	return w, err
}

func (s *StoreSink) create(e *Entry) (io.WriteCloser, error) {
	if s.imp == nil {
		return nil, refused("%s: a store path the manifest did not ask for", e.label())
	}
	b := nixstore.AddNAR(e.pathInfo())
	s.partial = true
	s.cutAt = s.out.offset()
	if _, err := s.out.Write(b); err != nil {
		return nil, s.importErr(e, err)
	}
	return &narWriter{s: s, e: e, limit: e.Size - min(e.Size, holdBack)}, nil
}

// narWriter passes a NAR to Nix but for its last bytes, which it keeps
// until Verified.
type narWriter struct {
	s     *StoreSink
	e     *Entry
	n     int64 // bytes written to it
	limit int64 // bytes passed on before the check
	held  []byte
}

func (w *narWriter) Write(p []byte) (int, error) {
	if w.n+int64(len(p)) > w.e.Size {
		return 0, refused("%s: more than its %d announced bytes", w.e.label(), w.e.Size)
	}
	pass := min(int64(len(p)), max(w.limit-w.n, 0))
	if pass > 0 {
		if _, err := w.s.out.Write(p[:pass]); err != nil {
			return 0, w.s.importErr(w.e, err)
		}
	}
	w.held = append(w.held, p[pass:]...)
	w.n += int64(len(p))
	w.s.keep.write(w.e, p)
	return len(p), nil
}

func (w *narWriter) Close() error {
	w.s.cur = w
	return nil
}

// Reuse accepts a path the store already has.
func (s *StoreSink) Reuse(e *Entry) error { return nil }

// Verified gives Nix the last bytes of the NAR just received, whose size
// and hash matched: Nix adds the path once it has checked them too.
func (s *StoreSink) Verified(ctx context.Context, e *Entry) error {
	w := s.cur
	s.cur = nil
	if w == nil || w.e != e || w.n != e.Size {
		return refused("%s: verified before it was received whole", e.label())
	}
	if _, err := s.out.Write(w.held); err != nil {
		return s.importErr(e, err)
	}
	s.partial = false
	s.fed++
	s.keep.dropTee() // verified: not to be continued
	return nil
}

func (s *StoreSink) importErr(e *Entry, err error) error {
	return fmt.Errorf("transfer: importing %s/%s: %w", nixstore.Dir, e.Name, err)
}

// Finish ends the import and waits until every path fed is in the store.
func (s *StoreSink) Finish() error {
	err := s.endImport()
	if err == nil && s.keep != nil {
		s.keep.ok = true
	}
	return err
}

// Confirm checks that the paths the stream imported are now valid in the
// store. The others were valid when the stream began (CheckManifest asked),
// so a stream that imported nothing, a re-ship, costs no second nix-store
// (about 80 ms on the rig, a tenth of such a run).
func (s *StoreSink) Confirm(ctx context.Context) error {
	var imported []string
	for _, p := range s.paths {
		if s.invalid[p] {
			imported = append(imported, p)
		}
	}
	if len(imported) == 0 {
		return nil
	}
	invalid, err := s.st.Invalid(ctx, imported)
	if err != nil {
		return err
	}
	for _, p := range imported {
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
	if msg := s.keep.abandon(); msg != "" {
		s.notify("%s", msg)
	}
}

// endImport ends the import: when Nix has no path in part, by ending its
// input after the last whole path and waiting for it; else by waiting for
// its replies for the paths given whole, and then killing it.
func (s *StoreSink) endImport() error {
	if s.opening != nil {
		<-s.opening
	}
	if s.trusting != nil {
		<-s.trusting
	}
	if s.imp == nil {
		return nil
	}
	imp := s.imp
	s.imp = nil
	if s.out == nil {
		// Greeted, never given a path.
		imp.CloseWrite()
		io.Copy(io.Discard, imp)
		return imp.Wait()
	}
	if s.partial {
		if s.out.cut(s.cutAt) {
			s.replies.wait(s.fed)
			imp.Kill()
		} else {
			s.partial = false // Nix has the whole paths only
			imp.CloseWrite()
		}
	} else {
		s.out.finish()
		imp.CloseWrite()
	}
	got, why := s.replies.drain()
	werr := imp.Wait()
	switch {
	case s.partial:
		return nil
	case werr != nil:
		return werr
	case got != s.fed:
		return fmt.Errorf("transfer: nix-store --serve added %d of the %d paths it was given, then stopped: %v", got, s.fed, why)
	}
	return nil
}

// Close ends an import that is still running (the paths completely fed stay
// imported; a partly fed one is not).
func (s *StoreSink) Close() error {
	err := s.endImport()
	s.keep.end()
	return err
}
