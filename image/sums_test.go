package image

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var sumsSeeds = []string{
	"",
	"0000000000000000000000000000000000000000000000000000000000000000 1 2 \"Image\"\n",
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 1700000000000000000 \"with space\\n\"\n",
	"zz 1 2 \"x\"\n",
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 -1 x \"x\"\n",
}

func TestSumsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := map[string]fileSum{
		"Image":        {sha256.Sum256([]byte("k")), 1, 1700000000123456789},
		"odd name\n\"": {sha256.Sum256(nil), 0, -5},
	}
	if err := writeSums(dir, "000001-20260101T000000Z", want); err != nil {
		t.Fatal(err)
	}
	got := readSums(filepath.Join(dir, "000001-20260101T000000Z.sums"))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("readSums(writeSums(%v)) = %v", want, got)
	}
	if fi, err := os.Stat(filepath.Join(dir, "000001-20260101T000000Z.sums")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("hash file mode = %v, %v, want 0644", fi.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("writeSums left %d files, want 1", len(entries))
	}
}

// FuzzParseSums: a damaged hash file only loses lines, and what it keeps
// is written back the same.
func FuzzParseSums(f *testing.F) {
	for _, s := range sumsSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// In memory: writeSums adds only a temporary file, its sync and
		// a rename, which would hold the fuzzer to a few hundred runs a
		// second.
		sums := parseSums(data)
		again := parseSums(formatSums(sums))
		if len(sums) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(again, sums) {
			t.Fatalf("parseSums(%q) = %v, rewritten and read again %v", data, sums, again)
		}
	})
}
