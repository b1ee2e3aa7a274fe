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
)

// StoreReader is the sending Nix store as CollectStore and Send need it.
// Paths are full store paths.
type StoreReader interface {
	// Closure returns every path paths refer to, directly or not, and
	// paths themselves.
	Closure(ctx context.Context, paths []string) ([]string, error)
	// Info returns each path's metadata from the store's database.
	Info(ctx context.Context, paths []string) (map[string]*PathInfo, error)
	// Dump streams a path's NAR, of size bytes as the database says.
	// Close reports how the dump ended (and whether the NAR was larger).
	Dump(ctx context.Context, path string, size int64) (io.ReadCloser, error)
}

// PathInfo is a store path's metadata as the store's database has it.
type PathInfo struct {
	Path       string
	NARHash    [32]byte
	NARSize    int64
	Deriver    string   // full path, or ""
	References []string // full paths
}

// CollectStore builds a Source of the closure of paths: one nar entry per
// store path, dependencies first, each with its NAR's size and SHA-256,
// references and deriver from the store's database, announced before any
// data moves so the receiver can skip what it has and check the rest.
func CollectStore(ctx context.Context, st StoreReader, paths []string) (*Source, error) {
	for _, p := range paths {
		if _, err := StoreBase(p); err != nil {
			return nil, fmt.Errorf("transfer: %q is not a store path: %v", p, err)
		}
	}
	closure, err := st.Closure(ctx, paths)
	if err != nil {
		return nil, err
	}
	infos, err := st.Info(ctx, closure)
	if err != nil {
		return nil, err
	}
	order, err := topoSort(closure, infos)
	if err != nil {
		return nil, err
	}
	if ec, ok := st.(entryCounter); ok {
		order = importOrder(order, infos, countEntries(ec, order))
	}
	src := &Source{Manifest: Manifest{Version: Version, Long: true}, store: st}
	for _, p := range order {
		info := infos[p]
		e := Entry{Type: TypeNAR, Size: info.NARSize, sum: info.NARHash, SHA256: hex.EncodeToString(info.NARHash[:])}
		if e.Name, err = StoreBase(p); err != nil {
			return nil, fmt.Errorf("transfer: the store lists %q, which is not a store path: %v", p, err)
		}
		for _, r := range info.References {
			b, err := StoreBase(r)
			if err != nil {
				return nil, fmt.Errorf("transfer: %s refers to %q, which is not a store path: %v", p, r, err)
			}
			e.References = append(e.References, b)
		}
		if info.Deriver != "" {
			if e.Deriver, err = StoreBase(info.Deriver); err != nil {
				return nil, fmt.Errorf("transfer: %s has deriver %q, which is not a store path: %v", p, info.Deriver, err)
			}
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

// topoSort orders the closure dependencies first, keeping the given order
// where it already is one (nix-store -qR prints one).
func topoSort(closure []string, infos map[string]*PathInfo) ([]string, error) {
	in := make(map[string]bool, len(closure))
	for _, p := range closure {
		in[p] = true
	}
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int, len(closure))
	order := make([]string, 0, len(closure))
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("transfer: the store's references form a cycle: %v", append(chain, p))
		}
		info := infos[p]
		if info == nil {
			return fmt.Errorf("transfer: the store gave no metadata for %s", p)
		}
		state[p] = visiting
		refs := slices.Clone(info.References)
		slices.Sort(refs)
		for _, r := range refs {
			if r == p {
				continue
			}
			if !in[r] {
				return fmt.Errorf("transfer: %s refers to %s, which is not in the closure the store gave", p, r)
			}
			if err := visit(r, append(chain, p)); err != nil {
				return err
			}
		}
		state[p] = done
		order = append(order, p)
		return nil
	}
	for _, p := range closure {
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// sendNAR streams the NAR of e from the store into out (adapter.sendNAR),
// and fails if it is not exactly the size and SHA-256 the store's database
// announced (a corrupt source store: the receiver would refuse it anyway).
func sendNAR(ctx context.Context, out *frames, ad *adapter, st StoreReader, e *Entry, cnt *Counters, buf []byte) error {
	p := e.label()
	rc, err := st.Dump(ctx, p, e.Size)
	if err != nil {
		return err
	}
	corrupt := "the store is corrupt or changed; check it with nix-store --verify --check-contents"
	h := sha256.New()
	r := &fileReader{f: io.TeeReader(rc, h), path: "the NAR of " + p, size: e.Size, buf: buf, cnt: cnt,
		short: func(n int64) error {
			return fmt.Errorf("transfer: %s: its NAR is %d bytes, not the %d the store's database says; %s", p, n, e.Size, corrupt)
		}}
	if err := ad.sendNAR(out, r, e.Size); err != nil {
		rc.Close()
		return err
	}
	var one [1]byte
	extra, _ := io.ReadFull(rc, one[:])
	cerr := rc.Close()
	switch {
	case extra > 0:
		return fmt.Errorf("transfer: %s: its NAR is more than the %d bytes the store's database says; %s", p, e.Size, corrupt)
	case cerr != nil:
		return cerr
	case [32]byte(h.Sum(nil)) != e.sum:
		return fmt.Errorf("transfer: %s: its NAR's SHA-256 is not the one in the store's database; %s", p, corrupt)
	}
	return nil
}
