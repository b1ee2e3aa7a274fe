package transfer

// The sending side of store paths: the closure and its metadata from the
// local store's database, and each NAR streamed from the store, checked
// against that database as it goes.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/nbship/nbship/nixstore"
)

// StoreReader is the sending Nix store as CollectStore and Send need it:
// one session (nix-store --serve) that answers the queries about the
// closure, then dumps the NARs wanted. Paths are full store paths.
type StoreReader interface {
	// Dump starts the session, before it is known what will be asked.
	Dump(ctx context.Context) (NARDump, error)
}

// NARDump is a store's session. Before Request: Closure returns every path
// paths refer to, directly or not, and paths themselves; Info each path's
// metadata from the store's database. Request gives it the paths whose
// NARs to dump (once); Read then returns their NARs back to back, each the
// size the database gives it, then the end; a Read error or an early end
// is the store's failure. Close stops the session, also while a Read is
// blocked on it, and waits for it to end.
type NARDump interface {
	io.ReadCloser
	Closure(paths []string) ([]string, error)
	Info(paths []string) (map[string]*nixstore.PathInfo, error)
	Request(paths []string)
}

// CollectStore builds a Source of the closure of paths: one nar entry per
// store path, dependencies first, each with its NAR's size and SHA-256,
// references and deriver from the store's database, announced before any
// data moves so the receiver can skip what it has and check the rest.
func CollectStore(ctx context.Context, st StoreReader, paths []string) (*Source, error) {
	for _, p := range paths {
		if _, err := nixstore.Base(p); err != nil {
			return nil, fmt.Errorf("transfer: %q is not a store path: %v", p, err)
		}
	}
	// The dump starts now (nix-store: a process, 60-80 ms), and the
	// database's metadata and the file system's entry counts are read side
	// by side: the stream can start as soon as the receiver has said what
	// it wants.
	pending := startDump(ctx, st)
	src, err := collectStore(st, pending, paths)
	if err != nil {
		pending.close()
		return nil, err
	}
	src.pending = pending
	return src, nil
}

func collectStore(st StoreReader, pending *pendingDump, paths []string) (*Source, error) {
	// The session, already started, answers in milliseconds, where a
	// nix-store for each query took 70-100 ms to start.
	if <-pending.c; pending.err != nil {
		return nil, pending.err
	}
	q := pending.d
	closure, err := q.Closure(paths)
	if err != nil {
		return nil, err
	}
	var counts map[string]int
	done := make(chan struct{})
	if ec, ok := st.(entryCounter); ok {
		go func() {
			defer close(done)
			counts = countEntries(ec, closure)
		}()
	} else {
		close(done)
	}
	defer func() { <-done }()
	infos, err := q.Info(closure)
	if err != nil {
		return nil, err
	}
	<-done
	order, err := nixstore.Order(closure, infos, counts)
	if err != nil {
		return nil, err
	}
	src := &Source{Manifest: Manifest{Version: Version, Long: true}, store: st}
	for _, p := range order {
		info := infos[p]
		e := Entry{Type: TypeNAR, Size: info.NARSize, sum: info.NARHash, SHA256: hex.EncodeToString(info.NARHash[:])}
		if e.Name, err = nixstore.Base(p); err != nil {
			return nil, fmt.Errorf("transfer: the store lists %q, which is not a store path: %v", p, err)
		}
		for _, r := range info.References {
			b, err := nixstore.Base(r)
			if err != nil {
				return nil, fmt.Errorf("transfer: %s refers to %q, which is not a store path: %v", p, r, err)
			}
			e.References = append(e.References, b)
		}
		if info.Deriver != "" {
			if e.Deriver, err = nixstore.Base(info.Deriver); err != nil {
				return nil, fmt.Errorf("transfer: %s has deriver %q, which is not a store path: %v", p, info.Deriver, err)
			}
		}
		e.CA = info.CA
		for _, sig := range info.Sigs {
			if nixstore.CheckSig(sig) == nil && !slices.Contains(e.Sigs, sig) && len(e.Sigs) < maxSigs {
				e.Sigs = append(e.Sigs, sig) // others the receiver could not use either
			}
		}
		if e.CA != "" && (len(e.CA) > maxCALen || !strings.HasPrefix(e.CA, "text:") && !strings.HasPrefix(e.CA, "fixed:")) {
			return nil, fmt.Errorf("transfer: the store gives %s the content address %q, which nbship cannot carry", p, e.CA)
		}
		if e.Size <= 0 {
			return nil, fmt.Errorf("transfer: the store's database has no NAR size for %s; run nix-store --verify --check-contents there", p)
		}
		src.Manifest.Entries = append(src.Manifest.Entries, e)
		src.paths = append(src.paths, "")
		src.Manifest.Total += e.Size
	}
	return src, nil
}

// entryCounter is a store whose paths this machine's file system shows,
// so that their entries can be counted (nixstore.Store).
type entryCounter interface {
	// Entries counts the files, directories and symlinks of path (0 when
	// it cannot be read).
	Entries(path string) int
}

// countEntries counts each path's entries, a few paths at a time.
func countEntries(ec entryCounter, paths []string) map[string]int {
	counts := make(map[string]int, len(paths))
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan string)
	for range 4 {
		wg.Go(func() {
			for p := range next {
				n := ec.Entries(p)
				mu.Lock()
				counts[p] = n
				mu.Unlock()
			}
		})
	}
	for _, p := range paths {
		next <- p
	}
	close(next)
	wg.Wait()
	return counts
}

// corruptStore is what to do about a store whose NARs are not what its
// database says.
const corruptStore = "the store is corrupt or changed; check it with nix-store --verify --check-contents"

// narDump is the store's dump of the NARs to send, back to back.
type narDump struct {
	rc   io.Reader
	left int // NARs still to come
}

// pendingDump is a store's dump being started (a process, on a real store)
// while the receiver says what it wants.
type pendingDump struct {
	c   chan struct{}
	d   NARDump
	err error
}

func startDump(ctx context.Context, st StoreReader) *pendingDump {
	p := &pendingDump{c: make(chan struct{})}
	go func() {
		defer close(p.c)
		p.d, p.err = st.Dump(ctx)
	}()
	return p
}

// request asks the dump for entries' NARs.
func (p *pendingDump) request(entries []*Entry) (*narDump, error) {
	<-p.c
	if p.err != nil {
		return nil, p.err
	}
	paths := make([]string, len(entries))
	for i, e := range entries {
		paths[i] = e.label()
	}
	p.d.Request(paths)
	return &narDump{rc: p.d, left: len(entries)}, nil
}

// close stops the dump, asked for NARs or not.
func (p *pendingDump) close() {
	if p == nil {
		return
	}
	<-p.c
	if p.d != nil {
		p.d.Close()
	}
}

// sendNAR streams the next NAR of the dump, e's, into out
// (adapter.sendNAR), and fails if it is not exactly the size and SHA-256
// the store's database announced (a corrupt source store: the receiver
// would refuse it anyway).
//
// With an offer (the receiver kept the start of this NAR from a failed
// attempt), the offered prefix is read off the dump and hashed first:
// when it matches, only the rest is sent. When it does not, the whole NAR
// is: the prefix, already read off the dump, comes from a second session
// of store (read that far and stopped), then the rest from the dump. It
// returns where the bytes sent began.
func sendNAR(ctx context.Context, out *frames, ad *adapter, store StoreReader, d *narDump, e *Entry, of *offer, cnt *Counters, buf []byte) (int64, error) {
	h := sha256.New()
	var from int64
	var head io.Reader // the prefix, sent again from a second session
	var again NARDump
	var prefix [32]byte
	headSum := sha256.New()
	if of != nil {
		if n, err := io.CopyBuffer(h, io.LimitReader(d.rc, of.length), buf); err != nil {
			return 0, fmt.Errorf("transfer: %s: reading its NAR: %w", e.label(), err)
		} else if n != of.length {
			return 0, fmt.Errorf("transfer: %s: its NAR is %d bytes, not the %d the store's database says; %s", e.label(), n, e.Size, corruptStore)
		}
		prefix = [32]byte(h.Sum(nil)) // and h goes on
		flag := byte(resumeWhole)
		if prefix == of.sum {
			flag, from = resumeRest, of.length
		} else {
			var err error
			if again, err = store.Dump(ctx); err != nil {
				return 0, err
			}
			defer again.Close()
			again.Request([]string{e.label()})
			head = io.TeeReader(io.LimitReader(again, of.length), headSum)
		}
		w, err := out.way(false)
		if err != nil {
			return 0, err
		}
		if _, err := w.Write([]byte{flag}); err != nil {
			return 0, writeErr{err}
		}
	}
	var body io.Reader = io.TeeReader(d.rc, h)
	if head != nil {
		body = io.MultiReader(head, body)
	}
	cnt.Total.Add(-from) // not moved again
	r := &fileReader{f: body, path: "the NAR of " + e.label(), size: e.Size, buf: buf, cnt: cnt, n: from,
		fail: func(n int64, err error) error {
			if err == io.EOF {
				return fmt.Errorf("transfer: %s: its NAR is %d bytes, not the %d the store's database says; %s", e.label(), n, e.Size, corruptStore)
			}
			return err
		}}
	if err := ad.sendNAR(out, r, e.Size-from); err != nil {
		return 0, err
	}
	if [32]byte(h.Sum(nil)) != e.sum || head != nil && [32]byte(headSum.Sum(nil)) != prefix {
		return 0, fmt.Errorf("transfer: %s: its NAR's SHA-256 is not the one in the store's database; %s", e.label(), corruptStore)
	}
	if d.left--; d.left == 0 {
		// The dump must end with the last NAR.
		var one [1]byte
		if k, err := io.ReadFull(d.rc, one[:]); k > 0 {
			return 0, fmt.Errorf("transfer: %s: the store's dump goes on after its NAR, which is more than the %d bytes the store's database says; %s", e.label(), e.Size, corruptStore)
		} else if err != io.EOF {
			return 0, err
		}
	}
	return from, nil
}
