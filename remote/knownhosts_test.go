package remote

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestMatchPattern(t *testing.T) {
	tests := []struct {
		s, p string
		want bool
	}{
		{"db", "db?", false},
		{"db1", "db?", true},
		{"db12", "db?", false},
		{"anything", "*", true},
		{"", "*", true},
		{"", "?", false},
		{"a.example", "*.example", true},
		{"example", "*.example", false},
		{"[127.0.0.1]:2222", "[127.0.0.1]:*", true},
		{"[127.0.0.1]:2222", "127.0.0.1:2222", false},
		{"abc", "a*c", true},
		{"abcbc", "a*bc", true},
		{"ABC", "abc", false},
	}
	for _, tt := range tests {
		if got := matchPattern(tt.s, tt.p); got != tt.want {
			t.Errorf("matchPattern(%q, %q) = %v, want %v", tt.s, tt.p, got, tt.want)
		}
	}
	lists := []struct {
		s, list string
		want    int
	}{
		{"a", "a,b", 1},
		{"b", "a,b", 1},
		{"c", "a,b", 0},
		{"a", "!a,*", -1},
		{"b", "!a,*", 1},
		{"x", "X", 1}, // patterns are lowercased
	}
	for _, tt := range lists {
		if got := matchPatternList(tt.s, tt.list, true); got != tt.want {
			t.Errorf("matchPatternList(%q, %q) = %d, want %d", tt.s, tt.list, got, tt.want)
		}
	}
}

func TestParseKnownHosts(t *testing.T) {
	k := randomHostKey(t)
	other := randomHostKey(t)
	line := func(s string) string { return s + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))) }
	file := strings.Join([]string{
		"# comment",
		"",
		line("a.example,b.example") + " comment here",
		"@cert-authority " + line("*.example"),
		"@revoked " + line("*"),
		"@bogus " + line("x"),
		"@revoked @cert-authority " + line("x"),
		"onlyname",
		"name ssh-ed25519",
		"name ssh-ed25519 !!!notbase64",
		"name ssh-rsa " + strings.Fields(line("x"))[2], // type and key differ
		"\t " + line(knownhosts.HashHostname("[h]:2222")),
		line("c.example") + "\r",
	}, "\n")
	got := parseKnownHosts("f", []byte(file))
	want := []struct {
		line   int
		marker khMarker
		names  string
	}{
		{3, markNone, "a.example,b.example"},
		{4, markCA, "*.example"},
		{5, markRevoked, "*"},
		{12, markNone, ""},
		{13, markNone, "c.example"},
	}
	if len(got) != len(want) {
		t.Fatalf("parseKnownHosts = %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.line != w.line || g.marker != w.marker || w.names != "" && g.names != w.names || !keysEqual(g.key, k) || g.file != "f" {
			t.Errorf("entry %d = %+v, want line %d, marker %d, names %q", i, g, w.line, w.marker, w.names)
		}
	}
	if !got[3].matches("[h]:2222") || got[3].matches("h") || got[3].matches("[h]:2223") {
		t.Errorf("hashed entry matches wrongly")
	}
	if !got[0].matches("b.example") || got[0].matches("c.example") {
		t.Errorf("a.example,b.example matches wrongly")
	}

	// check: a plain key against plain lines, a revoked line wins.
	entries := parseKnownHosts("f", []byte(line("h")+"\n"))
	if st, _ := check(entries, k); st != hostOK {
		t.Errorf("check(known key) = %v, want ok", st)
	}
	if st, f := check(entries, other); st != hostChanged || f.line != 1 {
		t.Errorf("check(other key) = %v, want changed at line 1", st)
	}
	entries = parseKnownHosts("f", []byte("@cert-authority "+line("h")+"\n"))
	if st, _ := check(entries, k); st != hostNew {
		t.Errorf("check(a key equal to a CA) = %v, want new: a CA line never trusts a plain key", st)
	}
}

func FuzzParseKnownHosts(f *testing.F) {
	k, err := ssh.ParsePublicKey(randomKeyBlob())
	if err != nil {
		f.Fatal(err)
	}
	key := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	for _, s := range []string{
		"host " + key,
		"@cert-authority *.example " + key + "\n@revoked * " + key,
		knownhosts.HashHostname("[h]:22") + " " + key,
		"|1|x|y " + key,
		"@revoked",
		"a,b,!c " + key + " comment\n# x\n\n",
		"[127.0.0.1]:2222 ssh-ed25519 AAAA",
	} {
		f.Add([]byte(s), "[h]:22")
	}
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		entries := parseKnownHosts("f", data)
		lines := bytes.Count(data, []byte("\n")) + 1
		for _, e := range entries {
			if e.key == nil || e.line < 1 || e.line > lines || e.names == "" {
				t.Fatalf("parseKnownHosts(%q) gave %+v", data, e)
			}
			e.matches(name)
		}
		check(entries, k)
	})
}

// randomKeyBlob (not random: fuzzing must be repeatable) is a fixed ed25519 public key in wire format.
func randomKeyBlob() []byte {
	pub := make([]byte, 32)
	for i := range pub {
		pub[i] = byte(i)
	}
	k, _ := ssh.NewPublicKey(ed25519.PublicKey(pub))
	return k.Marshal()
}
