package nixstore

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A closure like the bench's: sources with many small files, tests that
// refer to them, a toolchain of big binaries that refers to the sources,
// libraries and emulators of a few big files, and a top path.
func benchLikeClosure() (order []string, infos map[string]*PathInfo, entries map[string]int) {
	type p struct {
		name    string
		size    int64
		entries int
		refs    []string
	}
	ps := []p{ // dependencies first, in nix-store -qR's order
		{"libs", 71 << 20, 25, nil},
		{"emulators", 90 << 20, 9, []string{"libs"}},
		{"src", 130 << 20, 12000, nil},
		{"tests", 8 << 20, 3500, []string{"src"}},
		{"toolchain", 97 << 20, 120, []string{"src", "toolchain"}},
		{"top", 1 << 10, 3, []string{"libs", "emulators", "src", "tests", "toolchain"}},
	}
	infos = map[string]*PathInfo{}
	entries = map[string]int{}
	for _, x := range ps {
		info := &PathInfo{Path: x.name, NARSize: x.size, References: x.refs}
		infos[x.name] = info
		entries[x.name] = x.entries
		order = append(order, x.name)
	}
	return order, infos, entries
}

func TestImportOrderPutsManyFilePathsFirst(t *testing.T) {
	order, infos, entries := benchLikeClosure()
	got := importOrder(order, infos, entries)
	// src first (the densest path nothing holds back), then tests (denser
	// still, free once src is placed), the toolchain, then the paths of a
	// few big files; top last, as it refers to everything.
	want := []string{"src", "tests", "toolchain", "libs", "emulators", "top"}
	if !slices.Equal(got, want) {
		t.Errorf("importOrder = %v, want %v", got, want)
	}
	// Without counts (a store this machine cannot look at) the order is
	// the one given.
	if got := importOrder(order, infos, nil); !slices.Equal(got, order) {
		t.Errorf("importOrder without counts = %v, want the given %v", got, order)
	}
}

// Whatever the counts, every path comes after all it refers to, and each
// comes once.
func TestImportOrderKeepsReferencesFirst(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	for round := range 200 {
		n := 1 + r.IntN(40)
		var order []string
		infos := map[string]*PathInfo{}
		entries := map[string]int{}
		for i := range n {
			name := fmt.Sprintf("p%d", i)
			info := &PathInfo{Path: name, NARSize: int64(1 + r.IntN(1<<20))}
			for j := range i { // references only to earlier paths: a DAG
				if r.IntN(4) == 0 {
					info.References = append(info.References, order[j])
				}
			}
			if r.IntN(3) == 0 {
				info.References = append(info.References, name) // self-reference
			}
			infos[name] = info
			entries[name] = r.IntN(5000)
			order = append(order, name)
		}
		got := importOrder(order, infos, entries)
		if len(got) != n {
			t.Fatalf("round %d: %d paths in, %d out: %v", round, n, len(got), got)
		}
		placed := map[string]bool{}
		for _, p := range got {
			if placed[p] {
				t.Fatalf("round %d: %s placed twice: %v", round, p, got)
			}
			for _, ref := range infos[p].References {
				if ref != p && !placed[ref] {
					t.Fatalf("round %d: %s placed before its reference %s: %v", round, p, ref, got)
				}
			}
			placed[p] = true
		}
	}
}

func TestNixStoreEntries(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a", "b/c", "b/d/e", "b/d/f"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	var n Store
	// dir, a, b, b/c, b/d, b/d/e, b/d/f, link
	if got := n.Entries(dir); got != 8 {
		t.Errorf("Entries = %d, want 8", got)
	}
	if got := n.Entries(filepath.Join(dir, "a")); got != 1 {
		t.Errorf("Entries(a file) = %d, want 1", got)
	}
	if got := n.Entries(filepath.Join(dir, "missing")); got != 0 {
		t.Errorf("Entries(missing) = %d, want 0", got)
	}
}
func TestTopoSort(t *testing.T) {
	leaf, mid, top := Dir+"/"+leafName, Dir+"/"+midName, Dir+"/2dm3ab6xr8gn3bs6rnx4gfz1i0dbws75-top"
	paths := []string{top, mid, leaf} // dependents first, as a worst case
	infos := map[string]*PathInfo{
		leaf: {Path: leaf},
		mid:  {Path: mid, References: []string{leaf, mid}},
		top:  {Path: top, References: []string{mid, leaf}},
	}
	got, err := topoSort(paths, infos)
	if want := []string{leaf, mid, top}; err != nil || !slices.Equal(got, want) {
		t.Errorf("topoSort(%v) = %v, %v, want %v", paths, got, err, want)
	}
	infos[leaf].References = []string{top} // leaf -> top: a cycle
	if _, err := topoSort(paths, infos); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("topoSort(cycle) = %v, want a cycle error", err)
	}
	infos[leaf].References = []string{Dir + "/4l7p0sdzbqcfl8plvpfsl6vpf0w5mwvh-nowhere"}
	if _, err := topoSort(paths, infos); err == nil || !strings.Contains(err.Error(), "not in the closure") {
		t.Errorf("topoSort(reference outside) = %v, want an error", err)
	}
}
