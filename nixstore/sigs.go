package nixstore

// Store path signatures as Nix makes and checks them: an ed25519
// signature, by a named key, of the path's fingerprint
// (1;PATH;NARHASH;NARSIZE;REFERENCES), made with a key file (SigningKey);
// and what a store demands of the paths an untrusted user adds (Trust): a
// good signature by one of its trusted-public-keys, or a content address
// its name was made from. See docs/store-trust.md.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/nbship/nbship/internal/tail"
)

// maxSigLen bounds a signature.
const maxSigLen = 1024

// encodeNixBase32 encodes b in Nix's base32 (most significant digit first,
// as Nix prints hashes).
func encodeNixBase32(b []byte) string {
	n := (len(b)*8-1)/5 + 1
	out := make([]byte, 0, n)
	for k := n - 1; k >= 0; k-- {
		bit := k * 5
		i, j := bit/8, uint(bit%8)
		c := b[i] >> j
		if i+1 < len(b) {
			c |= b[i+1] << (8 - j)
		}
		out = append(out, nixBase32[c&0x1f])
	}
	return string(out)
}

// fingerprint is what a signature of the store path info signs, as Nix 2.8's
// ValidPathInfo::fingerprint makes it: "1;", the full path, ";sha256:"
// and the NAR hash in Nix base32, ";", the NAR size, ";", and the full
// paths of the references, sorted, joined by commas.
func fingerprint(info *PathInfo) string {
	refs := slices.Clone(info.References)
	slices.Sort(refs)
	return "1;" + info.Path + ";sha256:" + encodeNixBase32(info.NARHash[:]) + ";" +
		strconv.FormatInt(info.NARSize, 10) + ";" + strings.Join(refs, ",")
}

// splitKey splits NAME:BASE64 (a Nix key or signature) and decodes the
// base64 part, which must be n bytes long.
func splitKey(s string, n int) (string, []byte, error) {
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return "", nil, errors.New("not NAME:BASE64")
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("not NAME:BASE64: %v", err)
	}
	if len(b) != n {
		return "", nil, fmt.Errorf("%d bytes after the name, want %d", len(b), n)
	}
	return name, b, nil
}

// CheckSig reports why s is not a signature as Nix writes one
// (NAME:BASE64 of 64 bytes), or nil.
func CheckSig(s string) error {
	if len(s) > maxSigLen {
		return fmt.Errorf("longer than %d bytes", maxSigLen)
	}
	_, _, err := splitKey(s, ed25519.SignatureSize)
	return err
}

// SigningKey is a Nix secret key (nix-store --generate-binary-cache-key):
// its name and ed25519 private key.
type SigningKey struct {
	Name string
	key  ed25519.PrivateKey
}

// ParseSigningKey reads a Nix secret key file's contents: NAME:BASE64 of
// the 64-byte ed25519 secret key.
func ParseSigningKey(b []byte) (*SigningKey, error) {
	name, k, err := splitKey(strings.TrimSpace(string(b)), ed25519.PrivateKeySize)
	if err != nil {
		return nil, fmt.Errorf("not a Nix secret key (nix-store --generate-binary-cache-key makes one): %v", err)
	}
	return &SigningKey{Name: name, key: ed25519.PrivateKey(k)}, nil
}

// LoadSigningKey reads a Nix secret key file.
func LoadSigningKey(path string) (*SigningKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nixstore: signing key: %w", err)
	}
	k, err := ParseSigningKey(b)
	if err != nil {
		return nil, fmt.Errorf("nixstore: signing key %s: %w", path, err)
	}
	return k, nil
}

// Sign returns the signature of the path info describes by k, as nix
// store sign makes it.
func (k *SigningKey) Sign(info *PathInfo) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, []byte(fingerprint(info))))
}

// Trust is what the receiving store demands of a path an untrusted
// user adds: a signature by one of Keys (its trusted-public-keys), unless
// the path is content-addressed.
type Trust struct {
	Keys  map[string]ed25519.PublicKey
	Names []string // the keys' names, as configured
}

// ParseTrust reads the output of nix show-config --json and decides
// what a user (name and groups) who adds paths must show: nil when
// nothing (require-sigs off, or the user is in trusted-users; local:
// the store is opened directly, not through a daemon, so its user is
// trusted).
func ParseTrust(config []byte, userName string, groups []string, local bool) (*Trust, error) {
	var c struct {
		RequireSigs struct {
			Value *bool `json:"value"`
		} `json:"require-sigs"`
		Keys struct {
			Value []string `json:"value"`
		} `json:"trusted-public-keys"`
		Users struct {
			Value []string `json:"value"`
		} `json:"trusted-users"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("nix show-config --json: %v", err)
	}
	if c.RequireSigs.Value == nil {
		return nil, errors.New("nix show-config --json: no require-sigs")
	}
	if !*c.RequireSigs.Value || local {
		return nil, nil
	}
	for _, u := range c.Users.Value {
		if u == "*" || u == userName {
			return nil, nil
		}
		if g, ok := strings.CutPrefix(u, "@"); ok && slices.Contains(groups, g) {
			return nil, nil
		}
	}
	t := &Trust{Keys: map[string]ed25519.PublicKey{}}
	for _, k := range c.Keys.Value {
		name, pub, err := splitKey(k, ed25519.PublicKeySize)
		if err != nil {
			continue // Nix skips what it cannot use too
		}
		t.Keys[name] = ed25519.PublicKey(pub)
		t.Names = append(t.Names, name)
	}
	return t, nil
}

// Trust asks nix what the store demands of paths this process adds (nil:
// nothing). Nix 2.8's daemon does not say whether it trusts a client, so
// this reads the same nix.conf it does: require-sigs, trusted-users,
// trusted-public-keys.
func (n *Store) Trust(ctx context.Context) (*Trust, error) {
	cmd := exec.CommandContext(ctx, "nix", "show-config", "--json", "--extra-experimental-features", "nix-command")
	cmd.Env = n.Env
	var out bytes.Buffer
	t := &tail.Buffer{}
	cmd.Stdout, cmd.Stderr = &out, t
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if l := t.Last(); l != "" {
			return nil, fmt.Errorf("nixstore: nix show-config: %s", l)
		}
		return nil, fmt.Errorf("nixstore: nix show-config: %w", err)
	}
	u, err := user.Current()
	if err != nil {
		return nil, fmt.Errorf("nixstore: who runs the import: %w", err)
	}
	var groups []string
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := user.LookupGroupId(id); err == nil {
				groups = append(groups, g.Name)
			}
		}
	}
	// Opened directly (no daemon): "local", a chroot store's directory,
	// or root's default.
	remote := n.getenv("NIX_REMOTE")
	local := remote == "local" || strings.HasPrefix(remote, "local?") || strings.HasPrefix(remote, "/") || remote == "" && os.Geteuid() == 0
	st, err := ParseTrust(out.Bytes(), u.Username, groups, local)
	if err != nil {
		return nil, fmt.Errorf("nixstore: %w", err)
	}
	return st, nil
}

// getenv is a variable of nix-store's environment.
func (n *Store) getenv(k string) string {
	if n.Env == nil {
		return os.Getenv(k)
	}
	v := ""
	for _, kv := range n.Env {
		if key, val, ok := strings.Cut(kv, "="); ok && key == k {
			v = val
		}
	}
	return v
}

// makeStorePath is Nix's store path for a path of type typ (with its
// references) whose content hashes to sum: the SHA-256 of
// "TYPE:sha256:HEX:/nix/store:NAME", folded to 20 bytes, in Nix base32.
func makeStorePath(typ string, sum []byte, name string) string {
	h := sha256.Sum256([]byte(typ + ":sha256:" + hex.EncodeToString(sum) + ":" + Dir + ":" + name))
	var folded [20]byte
	for i, b := range h {
		folded[i%20] ^= b
	}
	return encodeNixBase32(folded[:]) + "-" + name
}

// caType is the type part of a content-addressed path's name hash: the
// kind, then each reference (self last, as ":self").
func caType(kind string, info *PathInfo, selfAllowed bool) (string, bool) {
	refs := slices.Clone(info.References)
	slices.Sort(refs)
	self := false
	for _, r := range refs {
		if r == info.Path {
			self = true
			continue
		}
		kind += ":" + r
	}
	if self {
		if !selfAllowed {
			return "", false
		}
		kind += ":self"
	}
	return kind, true
}

// caMatches reports whether info's content address is the one its name was
// made from, as Nix checks it (ValidPathInfo::isContentAddressed): for a
// recursive SHA-256 (fixed:r:sha256:), also that it is the NAR hash. The
// forms Nix 2.8 writes: text:sha256:H, fixed:r:sha256:H, fixed:ALGO:H.
func caMatches(info *PathInfo) bool {
	base, err := Base(info.Path)
	if err != nil {
		return false
	}
	name := base[storeHashLen+1:]
	method, rest, _ := strings.Cut(info.CA, ":")
	switch method {
	case "text":
		sum, err := ParseNARHash(rest)
		if err != nil {
			return false
		}
		typ, ok := caType("text", info, false)
		return ok && makeStorePath(typ, sum[:], name) == base
	case "fixed":
		if h, ok := strings.CutPrefix(rest, "r:sha256:"); ok {
			sum, err := ParseNARHash("sha256:" + h)
			if err != nil || sum != info.NARHash {
				return false
			}
			typ, ok := caType("source", info, true)
			return ok && makeStorePath(typ, sum[:], name) == base
		}
		// Any other fixed output: no references, and the name hashes
		// "fixed:out:[r:]ALGO:HEX:".
		if len(info.References) > 0 {
			return false
		}
		prefix := ""
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			prefix, rest = "r:", r
		}
		algo, digest, ok := strings.Cut(rest, ":")
		size := map[string]int{"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}[algo]
		if !ok || size == 0 {
			return false
		}
		b, err := decodeAnyHash(digest, size)
		if err != nil {
			return false
		}
		inner := sha256.Sum256([]byte("fixed:out:" + prefix + algo + ":" + hex.EncodeToString(b) + ":"))
		return makeStorePath("output:out", inner[:], name) == base
	}
	return false
}

// decodeAnyHash reads a digest of n bytes in base16, Nix base32 or base64.
func decodeAnyHash(s string, n int) ([]byte, error) {
	switch len(s) {
	case 2 * n:
		return hex.DecodeString(s)
	case (n*8-1)/5 + 1:
		return decodeNixBase32(s, n)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err == nil && len(b) != n {
		err = fmt.Errorf("%d bytes, want %d", len(b), n)
	}
	return b, err
}

// accepts reports whether the store takes the path info describes from an untrusted user: its
// content address is the one its name was made from (Nix checks that
// instead of signatures), or one of its signatures is a good one by a
// trusted key.
func (t *Trust) accepts(info *PathInfo) bool {
	if info.CA != "" && caMatches(info) {
		return true
	}
	fp := []byte(fingerprint(info))
	for _, s := range info.Sigs {
		name, sig, err := splitKey(s, ed25519.SignatureSize)
		if err != nil {
			continue
		}
		if k, ok := t.Keys[name]; ok && ed25519.Verify(k, fp, sig) {
			return true
		}
	}
	return false
}

// Check returns nil when the store takes the path info describes from an
// untrusted user, else the one line that says why not and what to do.
func (t *Trust) Check(info *PathInfo) error {
	if t.accepts(info) {
		return nil
	}
	accept := "no key: its trusted-public-keys is empty"
	if len(t.Names) > 0 {
		accept = "a signature by " + strings.Join(t.Names, " or ") + " (its trusted-public-keys)"
	}
	has := "no signature"
	if info.CA != "" {
		has = "a content address that is not the one its name was made from, and no good signature"
	}
	if len(info.Sigs) > 0 {
		var names []string
		for _, s := range info.Sigs {
			n, _, _ := strings.Cut(s, ":")
			names = append(names, n)
		}
		has = "signatures by " + strings.Join(names, ", ") + ", none of them good for a trusted key"
	}
	return fmt.Errorf("%s has %s; this store requires of its (untrusted) receiving user %s; sign the paths on the way (ship --sign-key FILE) or have that store trust the user", info.Path, has, accept)
}
