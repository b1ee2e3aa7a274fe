package nixstore

// Nix's serve protocol, the parts nbship speaks, and Nix's export format
// (for tests).

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
)

// PathInfo is a store path's metadata as the store's database has it.
type PathInfo struct {
	Path       string
	NARHash    [32]byte
	NARSize    int64
	Deriver    string   // full path, or ""
	References []string // full paths
	CA         string   // content address, or ""
	Sigs       []string // signatures, NAME:BASE64
}

// exportMagic ends the NAR of each record of Nix's export format.
const exportMagic = 0x4558494e

// Nix's serve protocol (nix-store --serve), the parts nbship speaks: the
// greeting; on the sending side the queries for a closure and its paths'
// metadata, and the command that dumps one path's NAR; on the receiving
// side the query for which paths are valid, and the command that adds one
// path from its NAR, given with its metadata. Numbers are 64-bit
// little-endian; strings their length, their bytes and zeros up to a
// multiple of 8; a set its size, then its strings.
const (
	serveMagic1        = 0x390c9deb // client → server
	serveMagic2        = 0x5452eecb // server → client
	serveVersion       = 2<<8 | 5   // the version that has cmdAddToStoreNar (and narHash in cmdQueryPathInfos)
	cmdQueryValidPaths = 1
	cmdQueryPathInfos  = 2
	cmdDumpStorePath   = 3
	cmdQueryClosure    = 7
	cmdAddToStoreNar   = 9
	// maxServeStr and maxServeSet bound what is read from nix-store: a
	// store path, a content address, a signature; a closure.
	maxServeStr = 4096
	maxServeSet = 1 << 20
)

// QueryInvalid asks the nix-store --serve on rw, greeted, which of paths
// are not valid, adding the valid ones to its temporary roots: the garbage
// collector leaves them alone until it exits. With substitute, nix-store
// first substitutes what it can of the paths it lacks (from the
// substituters of its nix.conf, with their timeouts; one that fails is a
// warning on its stderr, and the paths stay missing). Its answer is
// believed only for the paths asked about, and no more of them than were
// asked.
func QueryInvalid(rw io.ReadWriter, paths []string, substitute bool) (map[string]bool, error) {
	sub := uint64(0)
	if substitute {
		sub = 1
	}
	b := binary.LittleEndian.AppendUint64(nil, cmdQueryValidPaths)
	b = binary.LittleEndian.AppendUint64(b, 1) // lock: temporary roots
	b = binary.LittleEndian.AppendUint64(b, sub)
	b = appendSet(b, paths)
	if _, err := rw.Write(b); err != nil {
		return nil, err
	}
	asked := make(map[string]bool, len(paths))
	for _, p := range paths {
		asked[p] = true
	}
	n, err := readNum(rw)
	if err == nil && n > uint64(len(paths)) {
		err = fmt.Errorf("%d valid paths of the %d asked about", n, len(paths))
	}
	if err != nil {
		return nil, err
	}
	valid := make(map[string]bool, n)
	for range n {
		p, err := readStr(rw, maxServeStr)
		if err == nil && !asked[p] {
			err = fmt.Errorf("%q is valid, and was not asked about", p)
		}
		if err != nil {
			return nil, err
		}
		valid[p] = true
	}
	invalid := map[string]bool{}
	for _, p := range paths {
		if !valid[p] {
			invalid[p] = true
		}
	}
	return invalid, nil
}

// AddNAR returns the serve protocol's command that adds the path info
// describes, registered now and not built here; the path's NAR follows it
// (info.NARSize bytes), and nix-store adds the path once that NAR matched
// info's size and hash, and replies 1.
func AddNAR(info *PathInfo) []byte {
	b := binary.LittleEndian.AppendUint64(nil, cmdAddToStoreNar)
	b = appendStr(b, info.Path)
	b = appendStr(b, info.Deriver)
	b = appendStr(b, "sha256:"+hex.EncodeToString(info.NARHash[:]))
	refs := slices.Clone(info.References)
	slices.Sort(refs)
	b = appendSet(b, refs)
	b = binary.LittleEndian.AppendUint64(b, 0)                    // registration time: now
	b = binary.LittleEndian.AppendUint64(b, uint64(info.NARSize)) // narSize
	b = binary.LittleEndian.AppendUint64(b, 0)                    // not built here ("ultimate")
	b = appendSet(b, info.Sigs)                                   // checked by Nix when the user is not trusted
	return appendStr(b, info.CA)
}

// readPathInfo reads one path's metadata as cmdQueryPathInfos gives it
// (serve protocol 2.4 and later); nil: the empty path that ends them.
func readPathInfo(r io.Reader) (*PathInfo, error) {
	p, err := readStr(r, maxServeStr)
	if err != nil || p == "" {
		return nil, err
	}
	info := &PathInfo{Path: p}
	var hash string
	var sizes [2]uint64
	if info.Deriver, err = readStr(r, maxServeStr); err == nil {
		if info.References, err = readSet(r); err == nil {
			if sizes[0], err = readNum(r); err == nil { // download size
				if sizes[1], err = readNum(r); err == nil {
					hash, err = readStr(r, maxServeStr)
				}
			}
		}
	}
	if err == nil {
		info.CA, err = readStr(r, maxServeStr)
	}
	if err == nil {
		info.Sigs, err = readSet(r)
	}
	if err != nil {
		return nil, err
	}
	if len(info.Sigs) == 0 {
		info.Sigs = nil
	}
	if sizes[1] > 1<<62 {
		return nil, fmt.Errorf("%s: a NAR size of %d", p, sizes[1])
	}
	info.NARSize = int64(sizes[1])
	if info.NARHash, err = ParseNARHash(hash); err != nil {
		return nil, fmt.Errorf("%s: %v", p, err)
	}
	return info, nil
}

// Greet exchanges the serve protocol's greeting with a nix-store --serve
// on rw.
func Greet(rw io.ReadWriter) error {
	if err := writeNum(rw, serveMagic1); err != nil {
		return err
	}
	var hello [16]byte
	if _, err := io.ReadFull(rw, hello[:]); err != nil {
		return fmt.Errorf("no greeting: %w", err)
	}
	if m := binary.LittleEndian.Uint64(hello[:8]); m != serveMagic2 {
		return fmt.Errorf("greeting %#x is not Nix's serve protocol", m)
	}
	if v := binary.LittleEndian.Uint64(hello[8:]); v>>8 != serveVersion>>8 || v&0xff < serveVersion&0xff {
		return fmt.Errorf("serve protocol %d.%d; nbship needs %d.%d or later in that series (Nix 2.3 or later)", v>>8, v&0xff, serveVersion>>8, serveVersion&0xff)
	}
	return writeNum(rw, serveVersion)
}

// writeNum writes a number as Nix serialises it: 64-bit little-endian.
func writeNum(w io.Writer, n uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	_, err := w.Write(b[:])
	return err
}

// readNum reads a number as Nix serialises it.
func readNum(r io.Reader) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// readStr reads a string as Nix serialises it, of at most max bytes.
func readStr(r io.Reader, max uint64) (string, error) {
	n, err := readNum(r)
	if err != nil {
		return "", err
	}
	if n > max {
		return "", fmt.Errorf("a string of %d bytes, more than %d", n, max)
	}
	b := make([]byte, (n+7)/8*8)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// readSet reads a set of strings (store paths, signatures) as Nix
// serialises one.
func readSet(r io.Reader) ([]string, error) {
	n, err := readNum(r)
	if err != nil {
		return nil, err
	}
	if n > maxServeSet {
		return nil, fmt.Errorf("a set of %d strings, more than %d", n, maxServeSet)
	}
	set := make([]string, 0, min(n, 1024))
	for range n {
		s, err := readStr(r, maxServeStr)
		if err != nil {
			return nil, err
		}
		set = append(set, s)
	}
	return set, nil
}

// appendSet appends full store paths as Nix serialises a set of them.
func appendSet(b []byte, paths []string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(paths)))
	for _, p := range paths {
		b = appendStr(b, p)
	}
	return b
}

// appendStr appends a string as Nix serialises it: its length, its bytes,
// zeros up to a multiple of 8.
func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}

// appendPath appends the full store path of a base name as a Nix string;
// "" stays "" (no deriver).
func appendPath(b []byte, name string) []byte {
	if name == "" {
		return appendStr(b, "")
	}
	return appendStr(b, Dir+"/"+name)
}

// appendPaths appends a set of store paths as Nix serialises one: their
// number, then each full path, sorted.
func appendPaths(b []byte, names []string) []byte {
	names = slices.Clone(names)
	slices.Sort(names)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(names)))
	for _, n := range names {
		b = appendPath(b, n)
	}
	return b
}

// WriteExport writes one record of Nix's export format (the 1 that
// announces it, the NAR read from nar, the trailer) for the store path
// named name; the stream's final 0 is the caller's. Tests use it to make
// paths with references and derivers without building anything.
func WriteExport(w io.Writer, name string, nar io.Reader, references []string, deriver string) error {
	if err := writeNum(w, 1); err != nil {
		return err
	}
	if _, err := io.Copy(w, nar); err != nil {
		return err
	}
	// The trailer: the magic, the path, its references, its deriver and
	// no signature.
	b := binary.LittleEndian.AppendUint64(nil, exportMagic)
	b = appendPath(b, name)
	b = appendPaths(b, references)
	b = appendPath(b, deriver)
	b = binary.LittleEndian.AppendUint64(b, 0)
	_, err := w.Write(b)
	return err
}
