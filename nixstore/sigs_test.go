package nixstore

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nbship/nbship/internal/testbin"
)

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

func TestParseTrust(t *testing.T) {
	for _, tc := range trustCases {
		got, err := ParseTrust([]byte(tc.config), tc.user, tc.groups, tc.local)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: ParseTrust = %v, %v; want an error containing %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || (got == nil) != (tc.want == nil) || got != nil && !slices.Equal(got.Names, tc.want) && len(got.Names)+len(tc.want) > 0 {
			t.Errorf("%s: ParseTrust = %+v, %v; want keys %v", tc.name, got, err, tc.want)
		}
	}
}

func FuzzParseTrust(f *testing.F) {
	for _, tc := range trustCases {
		f.Add([]byte(tc.config))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseTrust(b, "netboot", []string{"netboot"}, false)
		if err != nil || st == nil {
			return
		}
		for _, n := range st.Names {
			if len(st.Keys[n]) != ed25519.PublicKeySize {
				t.Fatalf("key %s of %d bytes", n, len(st.Keys[n]))
			}
		}
		// Whatever it holds, judging an entry is safe.
		st.accepts(&PathInfo{Path: Dir + "/" + leafName, NARSize: 1, Sigs: []string{"a:" + strings.Repeat("A", 86) + "=="}})
	})
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
	leafBase, _ := Base(leaf)
	if err := WriteExport(&exp, mid, bytes.NewReader(nar), []string{leafBase, mid}, drvName); err != nil {
		t.Fatal(err)
	}
	binary.Write(&exp, binary.LittleEndian, uint64(0))
	run(exp.Bytes(), "nix-store", "--import")
	mid = Dir + "/" + mid
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
	name, pk32, err := splitKey(strings.TrimSpace(string(pub)), ed25519.PublicKeySize)
	if err != nil {
		t.Fatal(err)
	}
	trust := &Trust{Keys: map[string]ed25519.PublicKey{name: pk32}, Names: []string{name}}
	if len(infos) != 2 {
		t.Fatalf("nix path-info gave %d paths, want 2", len(infos))
	}
	for _, in := range infos {
		sum, err := ParseNARHash(in.NARHash)
		if err != nil {
			t.Fatal(err)
		}
		info := &PathInfo{Path: in.Path, NARHash: sum, NARSize: in.NARSize, References: in.References}
		if got := key.Sign(info); !slices.Contains(in.Sigs, got) {
			t.Errorf("Sign(%s) = %s, not among Nix's signatures %v (fingerprint %s)", in.Path, got, in.Sigs, fingerprint(info))
		}
		info.Sigs = in.Sigs
		if !trust.accepts(info) {
			t.Errorf("accepts(%s with Nix's signatures %v) = false", in.Path, info.Sigs)
		}
		info.Sigs = nil
		if trust.accepts(info) {
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
		e := &PathInfo{Path: in.Path, NARHash: sum, NARSize: in.NARSize, References: in.References, CA: in.CA}
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
		other.Path = Dir + "/0" + e.Path[len(Dir)+2:]
		if caMatches(&other) {
			t.Errorf("caMatches(%s renamed %s) = true", in.Path, other.Path)
		}
		other = *e
		other.References = append(slices.Clone(e.References), Dir+"/"+leafName)
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
		e := &PathInfo{Path: Dir + "/" + leafName, NARSize: 1, CA: ca}
		if self {
			e.References = []string{e.Path, Dir + "/" + midName}
		}
		if caMatches(e) && !strings.HasPrefix(ca, "text:") && !strings.HasPrefix(ca, "fixed:") {
			t.Fatalf("caMatches(%q) = true", ca)
		}
	})
}
