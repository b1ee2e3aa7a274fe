package nixstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// What nix-store --serve says about a path (cmdQueryPathInfos) is read
// within bounds: a record as Nix 2.8 writes it, then the empty path that
// ends them; a string, a set or a size out of bounds, or a hash that is not
// a SHA-256, is an error.
func FuzzReadPathInfo(f *testing.F) {
	nar := fakeNAR("mid")
	sum := sha256.Sum256(nar)
	b := appendStr(nil, Dir+"/"+midName)
	b = appendStr(b, Dir+"/"+drvName)
	b = appendSet(b, []string{Dir + "/" + leafName})
	b = binary.LittleEndian.AppendUint64(b, uint64(len(nar)))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(nar)))
	b = appendStr(b, "sha256:"+encodeNixBase32(sum[:]))
	f.Add(append(appendSet(appendStr(slices.Clone(b), ""), nil), appendStr(nil, "")...))
	f.Add(appendSet(appendStr(slices.Clone(b), "fixed:r:sha256:"+encodeNixBase32(sum[:])), []string{goodSig, "junk"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := readPathInfo(bytes.NewReader(b))
		if err != nil || info == nil {
			return
		}
		if info.NARSize < 0 || len(info.CA) > maxServeStr || len(info.Sigs) > maxServeSet {
			t.Fatalf("readPathInfo = %+v: out of its bounds", info)
		}
	})
}

func TestReadPathInfo(t *testing.T) {
	nar := fakeNAR("mid")
	sum := sha256.Sum256(nar)
	record := func(narSize uint64, hash string, refs uint64) []byte {
		b := appendStr(nil, Dir+"/"+midName)
		b = appendStr(b, Dir+"/"+drvName)
		b = binary.LittleEndian.AppendUint64(b, refs)
		for range min(refs, 2) {
			b = appendStr(b, Dir+"/"+leafName)
		}
		b = binary.LittleEndian.AppendUint64(b, narSize) // download size
		b = binary.LittleEndian.AppendUint64(b, narSize)
		b = appendStr(b, hash)
		b = appendStr(b, "")                            // not content-addressed
		b = appendSet(b, []string{"cache.example:sig"}) // signatures
		return b
	}
	good := "sha256:" + encodeNixBase32(sum[:])
	r := bytes.NewReader(append(record(uint64(len(nar)), good, 1), appendStr(nil, "")...))
	info, err := readPathInfo(r)
	if err != nil || info.Path != Dir+"/"+midName || info.NARHash != sum || info.NARSize != int64(len(nar)) ||
		info.Deriver != Dir+"/"+drvName || !slices.Equal(info.References, []string{Dir + "/" + leafName}) {
		t.Fatalf("readPathInfo = %+v, %v", info, err)
	}
	if end, err := readPathInfo(r); end != nil || err != nil {
		t.Errorf("after the record: %+v, %v; want the end", end, err)
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"long path", appendStr(nil, strings.Repeat("a", maxServeStr+1)), "more than 4096"},
		{"huge set", record(10, good, maxServeSet+1), "more than 1048576"},
		{"huge size", record(1<<63, good, 0), "a NAR size"},
		{"not a hash", record(10, "md5:abc", 0), "not a SHA-256"},
		{"cut short", record(10, good, 1)[:60], "EOF"},
	} {
		if info, err := readPathInfo(bytes.NewReader(tc.b)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: readPathInfo = %+v, %v; want an error containing %q", tc.name, info, err, tc.want)
		}
	}
}

// Store path names for the tests: leaf <- mid, and a .drv.
const (
	leafName = "0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf"
	midName  = "1dlqm4z1xv5yc0m2mbhy0gblp2wbwra8-mid"
	drvName  = "3xlk6vfqv9c1xx59k0g9jxgf9ryr4h4m-top.drv"
)

// goodSig is a well-formed signature (of nothing in particular).
var goodSig = "k-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64))

// fakeNAR is a stand-in NAR (readPathInfo never looks inside one).
func fakeNAR(content string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(content)))
	return append(b, content...)
}
