package transfer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
)

// testKey is a Nix key pair made from a fixed seed.
func testKey(name string, seed byte) (*SigningKey, string) {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub := name + ":" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	sk, err := ParseSigningKey([]byte(name + ":" + base64.StdEncoding.EncodeToString(k) + "\n"))
	if err != nil {
		panic(err)
	}
	return sk, pub
}

func trustOf(pubs ...string) *StoreTrust {
	cfg, _ := json.Marshal(map[string]any{
		"require-sigs":        map[string]any{"value": true},
		"trusted-public-keys": map[string]any{"value": pubs},
		"trusted-users":       map[string]any{"value": []string{"root"}},
	})
	t, err := ParseStoreTrust(cfg, "netboot", nil, false)
	if err != nil || t == nil {
		panic(fmt.Sprint(t, err))
	}
	return t
}

// storeTripWith is storeTrip with the sink set up by opt first.
func storeTripWith(t *testing.T, src, dst *fakeStore, opt func(*StoreSink), sign *SigningKey, paths ...string) (sink *StoreSink, sent, got *Stats, serr, rerr error) {
	t.Helper()
	ctx := context.Background()
	s, err := CollectStore(ctx, src, paths)
	if err != nil {
		t.Fatalf("CollectStore(%v): %v", paths, err)
	}
	if sign != nil {
		s.Sign(sign)
	}
	sink = NewStoreSink(dst)
	opt(sink)
	a, c := net.Pipe()
	sent, got, serr, rerr = pipeTrip(s, sink, zstdFastest, a, c, ReceiveOptions{Commit: func() (string, error) { return "", sink.Confirm(ctx) }})
	if cerr := sink.Close(); rerr == nil {
		rerr = cerr
	}
	return sink, sent, got, serr, rerr
}

func TestStoreTrust(t *testing.T) {
	key, pub := testKey("test-1", 1)
	other, _ := testKey("other-1", 2)
	_, pub2 := testKey("spare-1", 3)
	top := StoreDir + "/" + topName
	for _, tc := range []struct {
		name   string
		trust  *StoreTrust
		sign   *SigningKey
		prep   func(src *fakeStore) // before the trip
		refuse string               // "": imported
	}{
		{"untrusted user, unsigned", trustOf(pub, pub2), nil, nil,
			StoreDir + "/" + leafName + " has no signature; this store requires of its (untrusted) receiving user a signature by test-1 or spare-1"},
		{"signed on the way", trustOf(pub), key, nil, ""},
		{"signed by an untrusted key", trustOf(pub), other, nil, "signatures by other-1, none of them good"},
		{"no trusted key at all", trustOf(), key, nil, "its trusted-public-keys is empty"},
		{"signed in the source store", trustOf(pub), nil, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				info, _ := src.Info(context.Background(), []string{StoreDir + "/" + n})
				e := entryOf(info[StoreDir+"/"+n])
				src.paths[n].sigs = []string{key.sign(e)}
			}
		}, ""},
		{"a signature of another path", trustOf(pub), nil, func(src *fakeStore) {
			info, _ := src.Info(context.Background(), []string{StoreDir + "/" + midName})
			sig := key.sign(entryOf(info[StoreDir+"/"+midName]))
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].sigs = []string{sig}
			}
		}, StoreDir + "/" + leafName + " has signatures by test-1, none of them good"},
		{"a content address its name was not made from", trustOf(pub), nil, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].ca = "fixed:r:sha256:" + strings.Repeat("0", 52)
			}
		}, StoreDir + "/" + leafName + " has a content address that is not the one its name was made from"},
		{"a false content address, signed", trustOf(pub), key, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].ca = "text:sha256:" + strings.Repeat("0", 52)
			}
		}, ""},
		{"trusted user", nil, nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := threeLevels(), newFakeStore()
			if tc.prep != nil {
				tc.prep(src)
			}
			_, _, _, serr, rerr := storeTripWith(t, src, dst, func(s *StoreSink) { s.Trust = tc.trust }, tc.sign, top)
			if tc.refuse != "" {
				if rerr == nil || !strings.Contains(rerr.Error(), tc.refuse) || serr == nil {
					t.Fatalf("Receive = %v (sender: %v), want a refusal containing %q", rerr, serr, tc.refuse)
				}
				if strings.Contains(rerr.Error(), "\n") {
					t.Errorf("refusal %q is more than one line", rerr)
				}
				if len(dst.imported) != 0 || len(src.dumped) != 0 {
					t.Errorf("refused, but imported %v and dumped %v; want nothing moved", dst.imported, src.dumped)
				}
				return
			}
			if serr != nil || rerr != nil {
				t.Fatalf("trip: sender %v, receiver %v", serr, rerr)
			}
			if len(dst.imported) != 3 {
				t.Fatalf("imported %v, want 3 paths", dst.imported)
			}
			for _, n := range dst.imported {
				want := src.paths[n].sigs
				if tc.sign != nil {
					info, _ := src.Info(context.Background(), []string{StoreDir + "/" + n})
					want = append(slices.Clone(want), tc.sign.sign(entryOf(info[StoreDir+"/"+n])))
				}
				if got := dst.paths[n].sigs; !slices.Equal(got, want) {
					t.Errorf("%s arrived with signatures %v, want %v", n, got, want)
				}
				if got := dst.paths[n].ca; got != src.paths[n].ca {
					t.Errorf("%s arrived with content address %q, want %q", n, got, src.paths[n].ca)
				}
			}
		})
	}
}

// entryOf is the manifest entry of a path's metadata.
func entryOf(info *PathInfo) *Entry {
	e := &Entry{Type: TypeNAR, Size: info.NARSize, sum: info.NARHash}
	e.Name, _ = StoreBase(info.Path)
	for _, r := range info.References {
		b, _ := StoreBase(r)
		e.References = append(e.References, b)
	}
	return e
}

func TestStoreSubstitute(t *testing.T) {
	top := StoreDir + "/" + topName
	for _, tc := range []struct {
		name       string
		substitute bool
		cached     []string
		wantSent   int
		wantSubst  int
	}{
		{"half in the cache", true, []string{leafName}, 2, 1},
		{"all in the cache", true, []string{leafName, midName, topName}, 0, 3},
		{"cache empty", true, nil, 3, 0},
		{"not asked to", false, []string{leafName}, 3, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := threeLevels(), newFakeStore()
			dst.cache = map[string]*fakePath{}
			var bytes int64
			for _, n := range tc.cached {
				dst.cache[n] = src.paths[n]
				bytes += int64(len(src.paths[n].nar))
			}
			var notes []string
			sink, sent, _, serr, rerr := storeTripWith(t, src, dst, func(s *StoreSink) {
				s.Substitute = tc.substitute
				s.Notify = func(m string) { notes = append(notes, m) }
			}, nil, top)
			if serr != nil || rerr != nil {
				t.Fatalf("trip: sender %v, receiver %v", serr, rerr)
			}
			if sent.Sent != tc.wantSent || len(dst.substituted) != tc.wantSubst {
				t.Errorf("sent %d, substituted %v; want %d sent, %d substituted", sent.Sent, dst.substituted, tc.wantSent, tc.wantSubst)
			}
			if n, b := sink.Substituted(); n != tc.wantSubst || tc.substitute && b != bytes {
				t.Errorf("Substituted() = %d, %d; want %d, %d", n, b, tc.wantSubst, bytes)
			}
			if tc.substitute && (len(notes) != 1 || !strings.Contains(notes[0], fmt.Sprintf("%d of the 3 store paths", tc.wantSubst))) {
				t.Errorf("notes %q, want one line saying %d of the 3 paths came from the substituters", notes, tc.wantSubst)
			}
			for _, n := range []string{leafName, midName, topName} {
				if dst.paths[n] == nil {
					t.Errorf("%s is not in the store after the trip", n)
				}
			}
		})
	}
}

var trustCases = []struct {
	name   string
	config string
	user   string
	groups []string
	local  bool
	want   []string // key names; nil: nothing demanded
	err    string
}{
	{"untrusted", `{"require-sigs":{"value":true},"trusted-public-keys":{"value":["a-1:` + strings.Repeat("A", 43) + `=","bad","b-1:` + strings.Repeat("B", 43) + `="]},"trusted-users":{"value":["root"]}}`, "netboot", []string{"netboot"}, false, []string{"a-1", "b-1"}, ""},
	{"trusted by name", `{"require-sigs":{"value":true},"trusted-users":{"value":["root","netboot"]}}`, "netboot", nil, false, nil, ""},
	{"trusted by group", `{"require-sigs":{"value":true},"trusted-users":{"value":["@wheel"]}}`, "netboot", []string{"wheel"}, false, nil, ""},
	{"everyone trusted", `{"require-sigs":{"value":true},"trusted-users":{"value":["*"]}}`, "netboot", nil, false, nil, ""},
	{"no daemon", `{"require-sigs":{"value":true},"trusted-users":{"value":[]}}`, "root", nil, true, nil, ""},
	{"require-sigs off", `{"require-sigs":{"value":false},"trusted-users":{"value":[]}}`, "netboot", nil, false, nil, ""},
	{"no keys", `{"require-sigs":{"value":true}}`, "netboot", nil, false, []string{}, ""},
	{"no require-sigs", `{"trusted-users":{"value":[]}}`, "netboot", nil, false, nil, "no require-sigs"},
	{"not JSON", `warning: unknown setting`, "netboot", nil, false, nil, "show-config"},
}

func TestParseStoreTrust(t *testing.T) {
	for _, tc := range trustCases {
		got, err := ParseStoreTrust([]byte(tc.config), tc.user, tc.groups, tc.local)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: ParseStoreTrust = %v, %v; want an error containing %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || (got == nil) != (tc.want == nil) || got != nil && !slices.Equal(got.Names, tc.want) && len(got.Names)+len(tc.want) > 0 {
			t.Errorf("%s: ParseStoreTrust = %+v, %v; want keys %v", tc.name, got, err, tc.want)
		}
	}
}

func FuzzParseStoreTrust(f *testing.F) {
	for _, tc := range trustCases {
		f.Add([]byte(tc.config))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStoreTrust(b, "netboot", []string{"netboot"}, false)
		if err != nil || st == nil {
			return
		}
		for _, n := range st.Names {
			if len(st.Keys[n]) != ed25519.PublicKeySize {
				t.Fatalf("key %s of %d bytes", n, len(st.Keys[n]))
			}
		}
		// Whatever it holds, judging an entry is safe.
		st.accepts(&Entry{Name: leafName, Size: 1, Sigs: []string{"a:" + strings.Repeat("A", 86) + "=="}})
	})
}

func TestExpectWant(t *testing.T) {
	msg := func(ty byte, p string) []byte {
		var b bytes.Buffer
		writeMsg(&b, ty, []byte(p))
		return b.Bytes()
	}
	cat := func(m ...[]byte) []byte { return bytes.Join(m, nil) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
		err  string
	}{
		{"want", msg(msgWant, "\x07"), "\x07", ""},
		{"busy first", cat(msg(msgBusy, ""), msg(msgBusy, ""), msg(msgWant, "\x01")), "\x01", ""},
		{"busy with a payload", cat(msg(msgBusy, "x"), msg(msgWant, "\x01")), "", "protocol error"},
		{"abort while busy", cat(msg(msgBusy, ""), msg(msgAbort, "no space")), "", "no space"},
		{"ends while busy", msg(msgBusy, ""), "", "truncated"},
		{"refused", cat(msg(msgBusy, ""), msg(msgAck, `{"ok":false,"error":"transfer: refused stream: unsigned"}`)), "", "the other end stopped: transfer: refused stream: unsigned"},
		{"acknowledged before the want", msg(msgAck, `{"ok":true}`), "", "protocol error"},
	} {
		got, err := expectWant(bytes.NewReader(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expectWant(%s) = %q, %v; want an error containing %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("expectWant(%s) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestParseSigningKey(t *testing.T) {
	k := ed25519.NewKeyFromSeed(make([]byte, 32))
	for _, tc := range []struct {
		name, in, err string
	}{
		{"good", "k-1:" + base64.StdEncoding.EncodeToString(k) + "\n", ""},
		{"public key", "k-1:" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey)), "32 bytes after the name, want 64"},
		{"no name", ":" + base64.StdEncoding.EncodeToString(k), "not NAME:BASE64"},
		{"not base64", "k-1:!!", "not NAME:BASE64"},
		{"empty", "", "not NAME:BASE64"},
	} {
		got, err := ParseSigningKey([]byte(tc.in))
		if tc.err == "" && (err != nil || got.Name != "k-1") || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseSigningKey(%s) = %v, %v; want error %q", tc.name, got, err, tc.err)
		}
	}
}

// TestSignLikeNix signs store paths of a real Nix store with a key Nix
// made, and checks the signatures against the ones nix store sign makes:
// the same fingerprint, the same key format.
func TestSignLikeNix(t *testing.T) {
	for _, tool := range []string{"nix-store", "nix"} {
		if _, err := exec.LookPath(tool); err != nil {
			testbin.Missing(t, "%s not found; run scripts/deps.sh", tool)
		}
	}
	root := t.TempDir()
	env := append(os.Environ(), "NIX_REMOTE="+root,
		"NIX_CONFIG=build-users-group =\nsubstituters =\nsandbox = false\nfsync-metadata = false\nexperimental-features = nix-command")
	runRaw := func(stdin []byte, name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		cmd.Stdin = bytes.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, errb.String())
		}
		return out.Bytes()
	}
	run := func(stdin []byte, name string, args ...string) string {
		t.Helper()
		return strings.TrimSpace(string(runRaw(stdin, name, args...)))
	}
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	run(nil, "nix-store", "--generate-binary-cache-key", "nbship-test-1", sk, pk)
	// leaf: added (content-addressed); mid: imported, referring to leaf
	// and itself, with a deriver.
	if err := os.WriteFile(filepath.Join(dir, "leaf"), []byte("leaf\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	leaf := run(nil, "nix-store", "--add", filepath.Join(dir, "leaf"))
	if err := os.WriteFile(filepath.Join(dir, "mid"), []byte("mid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nar := runRaw(nil, "nix-store", "--dump", filepath.Join(dir, "mid"))
	mid := "a1b2c3d4f5g6h7i8j9k0lamanbpqrsvw-mid"
	var exp bytes.Buffer
	leafBase, _ := StoreBase(leaf)
	if err := WriteExport(&exp, mid, bytes.NewReader(nar), []string{leafBase, mid}, drvName); err != nil {
		t.Fatal(err)
	}
	binary.Write(&exp, binary.LittleEndian, uint64(0))
	run(exp.Bytes(), "nix-store", "--import")
	mid = StoreDir + "/" + mid
	run(nil, "nix", "store", "sign", "--key-file", sk, leaf, mid)
	var infos []struct {
		Path       string   `json:"path"`
		NARHash    string   `json:"narHash"`
		NARSize    int64    `json:"narSize"`
		References []string `json:"references"`
		Sigs       []string `json:"signatures"`
		CA         string   `json:"ca"`
	}
	if err := json.Unmarshal([]byte(run(nil, "nix", "path-info", "--json", "--sigs", leaf, mid)), &infos); err != nil {
		t.Fatal(err)
	}
	kb, err := os.ReadFile(sk)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ParseSigningKey(kb)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := os.ReadFile(pk)
	trust := trustOf(strings.TrimSpace(string(pub)))
	if len(infos) != 2 {
		t.Fatalf("nix path-info gave %d paths, want 2", len(infos))
	}
	for _, in := range infos {
		sum, err := ParseNARHash(in.NARHash)
		if err != nil {
			t.Fatal(err)
		}
		info := &PathInfo{Path: in.Path, NARHash: sum, NARSize: in.NARSize, References: in.References}
		e := entryOf(info)
		if got := key.sign(e); !slices.Contains(in.Sigs, got) {
			t.Errorf("sign(%s) = %s, not among Nix's signatures %v (fingerprint %s)", in.Path, got, in.Sigs, fingerprint(e))
		}
		e.Sigs = in.Sigs
		if !trust.accepts(e) {
			t.Errorf("accepts(%s with Nix's signatures %v) = false", in.Path, e.Sigs)
		}
		e.Sigs = nil
		if trust.accepts(e) {
			t.Errorf("accepts(%s with no signature) = true", in.Path)
		}
	}
}

// TestContentAddressLikeNix checks caMatches against paths real Nix made
// content-addressed: added (fixed:r:sha256), added flat and with other
// hashes, and derivations (text, with references).
func TestContentAddressLikeNix(t *testing.T) {
	for _, tool := range []string{"nix-store", "nix", "nix-instantiate"} {
		if _, err := exec.LookPath(tool); err != nil {
			testbin.Missing(t, "%s not found; run scripts/deps.sh", tool)
		}
	}
	root := t.TempDir()
	env := append(os.Environ(), "NIX_REMOTE="+root,
		"NIX_CONFIG=build-users-group =\nsubstituters =\nsandbox = false\nfsync-metadata = false\nexperimental-features = nix-command")
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = env
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, errb.String())
		}
		return strings.TrimSpace(out.String())
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "file")
	if err := os.WriteFile(f, []byte("content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	paths := []string{
		run("nix-store", "--add", f),
		run("nix-store", "--add-fixed", "sha256", f),
		run("nix-store", "--add-fixed", "sha1", f),
		run("nix-store", "--add-fixed", "--recursive", "sha512", f),
	}
	drv := run("nix-instantiate", "-E", `derivation { name = "t"; system = "x86_64-linux"; builder = "/bin/sh"; src = builtins.toFile "s" "x"; }`)
	paths = append(paths, strings.Fields(run("nix-store", "-q", "--references", drv))...)
	type info struct {
		Path       string   `json:"path"`
		NARHash    string   `json:"narHash"`
		NARSize    int64    `json:"narSize"`
		References []string `json:"references"`
		CA         string   `json:"ca"`
	}
	var infos, drvInfo []info
	if err := json.Unmarshal([]byte(run("nix", append([]string{"path-info", "--json"}, paths...)...)), &infos); err != nil {
		t.Fatal(err)
	}
	// The derivation itself, not its output.
	if err := json.Unmarshal([]byte(run("nix", "path-info", "--json", "--derivation", drv)), &drvInfo); err != nil {
		t.Fatal(err)
	}
	infos = append(infos, drvInfo...)
	paths = append(paths, drv)
	kinds := map[string]bool{}
	for _, in := range infos {
		sum, err := ParseNARHash(in.NARHash)
		if err != nil {
			t.Fatal(err)
		}
		e := entryOf(&PathInfo{Path: in.Path, NARHash: sum, NARSize: in.NARSize, References: in.References})
		e.CA = in.CA
		if in.CA == "" {
			t.Fatalf("%s has no content address", in.Path)
		}
		k, _, _ := strings.Cut(in.CA, ":")
		kinds[k] = true
		if !caMatches(e) {
			t.Errorf("caMatches(%s, %s, refs %v) = false", in.Path, in.CA, in.References)
		}
		// The same content address under another name, or with a
		// reference more, is not it.
		other := *e
		other.Name = "0" + e.Name[1:]
		if caMatches(&other) {
			t.Errorf("caMatches(%s renamed %s) = true", in.Path, other.Name)
		}
		other = *e
		other.References = append(slices.Clone(e.References), leafName)
		if caMatches(&other) {
			t.Errorf("caMatches(%s with a reference added) = true", in.Path)
		}
	}
	if !kinds["text"] || !kinds["fixed"] || len(infos) != len(paths) {
		t.Errorf("checked %d paths of kinds %v, want %d of text and fixed", len(infos), kinds, len(paths))
	}
}

func FuzzCAMatches(f *testing.F) {
	for _, ca := range []string{"text:sha256:10a83a91g1r50bdw8g4hn47m7j7m6angpabwc80l9c16nx11cw9d", "fixed:r:sha256:" + strings.Repeat("0", 52),
		"fixed:sha1:n55cqcb8nrmcdn94y87aq6law0h0irvz", "fixed:r:sha512:" + strings.Repeat("1", 103), "fixed:md5:" + strings.Repeat("a", 32), "fixed:r:", "text:"} {
		f.Add(ca, true)
	}
	f.Fuzz(func(t *testing.T, ca string, self bool) {
		e := &Entry{Type: TypeNAR, Name: leafName, Size: 1, CA: ca}
		if self {
			e.References = []string{leafName, midName}
		}
		if caMatches(e) && !strings.HasPrefix(ca, "text:") && !strings.HasPrefix(ca, "fixed:") {
			t.Fatalf("caMatches(%q) = true", ca)
		}
	})
}

// busyWatch is the receiver's end of the connection: it closes seen once
// the receiver has written n busy messages.
type busyWatch struct {
	net.Conn
	n    int
	seen chan struct{}
}

func (b *busyWatch) Write(p []byte) (int, error) {
	if len(p) == 5 && p[0] == msgBusy && b.n > 0 {
		if b.n--; b.n == 0 {
			close(b.seen)
		}
	}
	return b.Conn.Write(p)
}

// slowSink is a StoreSink whose manifest check lasts until the receiver
// has said it is busy a few times (a store substituting for long).
type slowSink struct {
	*StoreSink
	seen chan struct{}
}

func (s *slowSink) CheckManifest(ctx context.Context, m *Manifest) error {
	<-s.seen
	return s.StoreSink.CheckManifest(ctx, m)
}

// TestBusyWhileChecking: while the receiver's store takes its time over
// the manifest, the receiver says it is busy, and the sender waits through
// those messages for the want, then sends.
func TestBusyWhileChecking(t *testing.T) {
	defer func(d time.Duration) { busyEvery = d }(busyEvery)
	busyEvery = time.Millisecond
	src, dst := threeLevels(), newFakeStore()
	s, err := CollectStore(context.Background(), src, []string{StoreDir + "/" + topName})
	if err != nil {
		t.Fatal(err)
	}
	a, c := net.Pipe()
	w := &busyWatch{Conn: c, n: 3, seen: make(chan struct{})}
	sink := &slowSink{StoreSink: NewStoreSink(dst), seen: w.seen}
	sent, _, serr, rerr := pipeTrip(s, sink, zstdFastest, a, w, ReceiveOptions{})
	sink.Close()
	if serr != nil || rerr != nil || sent.Sent != 3 || len(dst.imported) != 3 {
		t.Fatalf("trip with a slow check: sender %v, receiver %v, %+v sent, %v imported; want all 3", serr, rerr, sent, dst.imported)
	}
}
