package transfer

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
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// entryCounter is a store whose paths this machine's file system shows,
// so that their entries can be counted.
type entryCounter interface {
	// Entries counts the files, directories and symlinks of path (0 when
	// it cannot be read).
	Entries(path string) int
}

// maxCount bounds the walk of one path: past it, a path is import-heavy
// enough to go first anyway.
const maxCount = 1 << 20

// Entries counts path's entries from their directory listings (no stat of
// each).
func (n *NixStore) Entries(path string) int {
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
