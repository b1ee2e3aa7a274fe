package nixstore

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt", true},
		{"00000000000000000000000000000000-x", true},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-hello-2.12.1", true},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a+b_c?d=e", true},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-" + strings.Repeat("x", 211), true},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-" + strings.Repeat("x", 212), false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9v-short", false},
		{"e3n6ml62lc6l9glpaz6fq7fvi2rks9vq-e-is-not-base32", false},
		{"Z3N6ML62LC6L9GLPAZ6FQ7FVI2RKS9VQ-upper", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-.hidden", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a/b", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a b", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-..", false},
		{"z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a\x00", false},
		{"../../etc/passwd", false},
		{"", false},
	} {
		err := CheckName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("CheckName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestBase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/nix/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt", "z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt"},
		{"/nix/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt/bin/x", ""},
		{"/nix/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt/", ""},
		{"/gnu/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt", ""},
		{"nix/store/z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt", ""},
		{"/nix/store/", ""},
	} {
		got, err := Base(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("Base(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseNARHash(t *testing.T) {
	// One NAR's hash as Nix 2.8 printed it three ways (--dump-db, -q --hash,
	// path-info --json).
	want := "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
	for _, in := range []string{
		want,
		"sha256:" + want,
		"sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=",
	} {
		sum, err := ParseNARHash(in)
		if err != nil || hex.EncodeToString(sum[:]) != want {
			t.Errorf("ParseNARHash(%q) = %x, %v, want %s", in, sum, err, want)
		}
	}
	for _, in := range []string{
		"", "sha256:", "md5:" + want, want[:63], "sha256:e4zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		"sha256:z4zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", // overflows 256 bits
		"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx", "sha1:" + want[:40],
	} {
		if sum, err := ParseNARHash(in); err == nil {
			t.Errorf("ParseNARHash(%q) = %x, want an error", in, sum)
		}
	}
}

func FuzzParseNARHash(f *testing.F) {
	for _, s := range []string{
		"1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
		"sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=",
		"sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sum, err := ParseNARHash(s)
		if err != nil {
			return
		}
		// Whatever form it came in, its hex form parses to the same hash.
		again, err := ParseNARHash(hex.EncodeToString(sum[:]))
		if err != nil || again != sum {
			t.Fatalf("ParseNARHash(%q) = %x, but its hex parses to %x, %v", s, sum, again, err)
		}
	})
}

func TestNixBase32RoundTrip(t *testing.T) {
	want, _ := hex.DecodeString("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
	if got := encodeNixBase32(want); got != "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw" {
		t.Fatalf("encodeNixBase32 = %s, not what Nix printed", got)
	}
	for i := range 2000 {
		b := make([]byte, 32)
		for k := range b {
			b[k] = byte(i*7 + k*k*31 + i*k)
		}
		if i%3 == 0 {
			rand.Read(b)
		}
		got, err := decodeNixBase32(encodeNixBase32(b), 32)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("decodeNixBase32(encode(%x)) = %x, %v", b, got, err)
		}
	}
}
