package nixstore

// Nix store path names and NAR hashes, as much of them as nbship needs:
// checking a name, splitting /nix/store/NAME, and reading the forms in which
// Nix prints a NAR's SHA-256 (base16, Nix's own base32, SRI base64).

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Dir is the Nix store nbship ships between. Both ends must use it:
// a store path's name is only meaningful under the store dir it was made for.
const Dir = "/nix/store"

// nixBase32 is the alphabet of Nix's base32 (no e, o, t, u).
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

const (
	storeHashLen    = 32  // characters of a store path's hash part
	maxStoreNameLen = 211 // characters of the name part (Nix's limit)
)

// CheckName reports why base is not the base name of a Nix store path
// (32 characters of Nix's base32, '-', a name of letters, digits and +-._?=
// that does not start with a period), or nil.
func CheckName(base string) error {
	if len(base) < storeHashLen+2 || base[storeHashLen] != '-' {
		return errors.New("not HASH-NAME with a 32-character hash")
	}
	for i := 0; i < storeHashLen; i++ {
		if strings.IndexByte(nixBase32, base[i]) < 0 {
			return fmt.Errorf("hash part has %q, which is not in Nix's base32 alphabet", base[i])
		}
	}
	name := base[storeHashLen+1:]
	if len(name) > maxStoreNameLen {
		return fmt.Errorf("name part longer than %d characters", maxStoreNameLen)
	}
	if name[0] == '.' {
		return errors.New("name part starts with a period")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("name part has %q (allowed: letters, digits and +-._?=)", c)
		}
	}
	return nil
}

// Base returns the base name of the store path p (/nix/store/NAME), or
// why p is not one. Paths inside a store path are not store paths.
func Base(p string) (string, error) {
	base, ok := strings.CutPrefix(p, Dir+"/")
	if !ok {
		return "", fmt.Errorf("not under %s/", Dir)
	}
	if strings.Contains(base, "/") {
		return "", errors.New("a path inside a store path, not a store path itself")
	}
	if err := CheckName(base); err != nil {
		return "", err
	}
	return base, nil
}

// decodeNixBase32 decodes Nix's base32 (least significant digit last) into
// n bytes.
func decodeNixBase32(s string, n int) ([]byte, error) {
	if len(s) != (n*8-1)/5+1 {
		return nil, fmt.Errorf("%d base32 digits, want %d", len(s), (n*8-1)/5+1)
	}
	out := make([]byte, n)
	for k := 0; k < len(s); k++ {
		d := strings.IndexByte(nixBase32, s[len(s)-k-1])
		if d < 0 {
			return nil, fmt.Errorf("%q is not a Nix base32 digit", s[len(s)-k-1])
		}
		b := k * 5
		i, j := b/8, uint(b%8)
		out[i] |= byte(d << j)
		if i < n-1 {
			out[i+1] |= byte(d >> (8 - j))
		} else if d>>(8-j) != 0 {
			return nil, errors.New("base32 value overflows the hash")
		}
	}
	return out, nil
}

// ParseNARHash reads a NAR's SHA-256 in any form Nix prints it: 64 hex
// digits (nix-store --dump-db), sha256:HEX or sha256:BASE32 (nix-store -q
// --hash), or sha256-BASE64 (SRI, nix path-info --json).
func ParseNARHash(s string) ([32]byte, error) {
	var sum [32]byte
	var b []byte
	var err error
	switch rest, ok := strings.CutPrefix(s, "sha256-"); {
	case ok:
		b, err = base64.StdEncoding.DecodeString(rest)
	default:
		rest, _ = strings.CutPrefix(s, "sha256:")
		switch len(rest) {
		case 64:
			b, err = hex.DecodeString(rest)
		case 52:
			b, err = decodeNixBase32(rest, 32)
		default:
			err = fmt.Errorf("%d characters is neither hex (64) nor Nix base32 (52)", len(rest))
		}
	}
	if err == nil && len(b) != 32 {
		err = fmt.Errorf("%d bytes, not 32", len(b))
	}
	if err != nil {
		return sum, fmt.Errorf("NAR hash %q is not a SHA-256: %v", s, err)
	}
	copy(sum[:], b)
	return sum, nil
}
