package transfer

import (
	"context"
	"testing"

	"github.com/nbship/nbship/nixstore"
)

// countingStore is a fakeStore this machine can look at: its entry counts
// are given.
type countingStore struct {
	*fakeStore
	entries map[string]int
}

func (c countingStore) Entries(path string) int { return c.entries[path] }

// CollectStore orders the manifest by the counts when the store gives them.
func TestCollectStoreOrdersByEntries(t *testing.T) {
	src := newFakeStore()
	src.add(leafName, "a big library", nil, "")
	src.add(midName, "sources", nil, "")
	src.add(topName, "top", []string{midName, leafName}, drvName)
	top := nixstore.Dir + "/" + topName
	names := func(s *Source) []string {
		var out []string
		for _, e := range s.Manifest.Entries {
			out = append(out, e.Name)
		}
		return out
	}
	plain, err := CollectStore(context.Background(), src, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	counted, err := CollectStore(context.Background(), countingStore{src, map[string]int{
		nixstore.Dir + "/" + midName: 5000, nixstore.Dir + "/" + leafName: 1, top: 1,
	}}, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(counted); got[0] != midName || got[2] != topName {
		t.Errorf("manifest order %v: want the many-file %s first and %s last (given order: %v)", got, midName, topName, names(plain))
	}
}
