package nixstore

// The order store paths go in. The receiving Nix adds them one after the
// other, and what costs it time is entries more than bytes: a path of
// 11,000 small source files takes seconds to restore after its last byte
// arrived, while a path of a few big binaries is restored as fast as it
// arrives. Sent last, the many-file path is a tail after the transfer;
// sent first, Nix restores it while the rest is still on the wire. So among
// the paths whose references are already placed (Nix adds a path only
// after its references), the one with the most entries per NAR byte goes
// first; a store that cannot be looked at keeps the dependencies-first
// order nix-store -qR gives.

import (
	"container/heap"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// maxCount bounds the walk of one path: past it, a path is import-heavy
// enough to go first anyway.
const maxCount = 1 << 20

// Entries counts path's entries from their directory listings (no stat of
// each): 0 when it cannot be read.
func (n *Store) Entries(path string) int {
	if _, err := os.Lstat(path); err != nil {
		return 0
	}
	count := 0
	filepath.WalkDir(path, func(_ string, _ fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		count++
		if count >= maxCount {
			return filepath.SkipAll
		}
		return nil
	})
	return count
}

// Order orders the closure dependencies first, keeping the given order
// where it already is one (nix-store -qR prints one); given each path's
// entry count (nil: not known), the paths with the most entries per NAR
// byte go as early as their references let them.
func Order(closure []string, infos map[string]*PathInfo, entries map[string]int) ([]string, error) {
	order, err := topoSort(closure, infos)
	if err != nil || entries == nil {
		return order, err
	}
	return importOrder(order, infos, entries), nil
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
			return fmt.Errorf("nixstore: the store's references form a cycle: %v", append(chain, p))
		}
		info := infos[p]
		if info == nil {
			return fmt.Errorf("nixstore: the store gave no metadata for %s", p)
		}
		state[p] = visiting
		refs := slices.Clone(info.References)
		slices.Sort(refs)
		for _, r := range refs {
			if r == p {
				continue
			}
			if !in[r] {
				return fmt.Errorf("nixstore: %s refers to %s, which is not in the closure the store gave", p, r)
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

// importOrder reorders order (dependencies first, as topoSort returns it):
// of the paths whose references are all placed, the one with the most
// entries per NAR byte next; ties keep their place in order.
func importOrder(order []string, infos map[string]*PathInfo, entries map[string]int) []string {
	pos := make(map[string]int, len(order))
	for i, p := range order {
		pos[p] = i
	}
	waiting := make([]int, len(order))      // references of each path not yet placed
	dependents := make([][]int, len(order)) // who refers to each path
	for i, p := range order {
		for _, r := range infos[p].References {
			j, ok := pos[r]
			if !ok || j == i {
				continue
			}
			waiting[i]++
			dependents[j] = append(dependents[j], i)
		}
	}
	q := &readyPaths{density: make([]float64, len(order))}
	for i, p := range order {
		q.density[i] = float64(entries[p]) / float64(max(infos[p].NARSize, 1))
	}
	for i := range order {
		if waiting[i] == 0 {
			heap.Push(q, i)
		}
	}
	out := make([]string, 0, len(order))
	for q.Len() > 0 {
		i := heap.Pop(q).(int)
		out = append(out, order[i])
		for _, d := range dependents[i] {
			if waiting[d]--; waiting[d] == 0 {
				heap.Push(q, d)
			}
		}
	}
	return out
}

// readyPaths is a heap of indexes into the order: the densest first, then
// the earliest.
type readyPaths struct {
	idx     []int
	density []float64
}

func (q *readyPaths) Len() int { return len(q.idx) }
func (q *readyPaths) Less(a, b int) bool {
	i, j := q.idx[a], q.idx[b]
	if q.density[i] != q.density[j] {
		return q.density[i] > q.density[j]
	}
	return i < j
}
func (q *readyPaths) Swap(a, b int) { q.idx[a], q.idx[b] = q.idx[b], q.idx[a] }
func (q *readyPaths) Push(x any)    { q.idx = append(q.idx, x.(int)) }
func (q *readyPaths) Pop() any {
	x := q.idx[len(q.idx)-1]
	q.idx = q.idx[:len(q.idx)-1]
	return x
}
