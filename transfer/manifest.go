package transfer

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/nbship/nbship/nixstore"
)

// Entry types.
const (
	TypeFile = "file"
	TypeDir  = "dir"
	// TypeNAR is a Nix store path: Name is its base name, the data is its
	// NAR (Size = narSize, SHA256 = narHash), and References and Deriver
	// are its metadata from the sender's store database.
	TypeNAR = "nar"
)

// Entry is one item of a stream: a directory, or a file (or a store path's
// NAR) whose Size bytes follow in the data and must hash to SHA256.
type Entry struct {
	Name   string      `json:"name"`
	Type   string      `json:"type"`
	Mode   fs.FileMode `json:"mode"` // permission bits only
	Size   int64       `json:"size,omitempty"`
	SHA256 string      `json:"sha256,omitempty"` // lowercase hex

	// Store paths only: base names of the paths this one refers to (it
	// may name itself), and of the derivation that built it ("" if none).
	References []string `json:"references,omitempty"`
	Deriver    string   `json:"deriver,omitempty"`
	// Store paths only: the path's signatures (NAME:BASE64, as Nix keeps
	// them) and its content address ("" if it has none).
	Sigs []string `json:"sigs,omitempty"`
	CA   string   `json:"ca,omitempty"`

	sum [32]byte
}

// label names the entry in messages: a store path in full.
func (e *Entry) label() string {
	if e.Type == TypeNAR {
		return nixstore.Dir + "/" + e.Name
	}
	return e.Name
}

// hasData reports whether bytes of the entry follow in the data.
func (e *Entry) hasData() bool { return e.Type == TypeFile || e.Type == TypeNAR }

// Sum is the entry's SHA-256 as bytes (valid after Validate).
func (e *Entry) Sum() [32]byte { return e.sum }

// Manifest is the stream's header: everything the receiver will get, and
// the total it may expect, announced before any data.
type Manifest struct {
	Version int     `json:"version"`
	Entries []Entry `json:"entries"`
	Total   int64   `json:"total"` // sum of file sizes
	// Long: the data is internal/ldm's records (a closure's NARs, where
	// binaries repeat each other megabytes apart), not the bytes as they
	// are (files, whose sender saves ldm's time).
	Long bool `json:"long,omitempty"`
}

// Limits a manifest must respect.
const (
	// MaxEntries bounds a stream's entries: files and directories, or
	// store paths. An image is a handful of files, a closure a few
	// thousand store paths; the bound keeps what the receiver decodes
	// (with maxHeader) within its memory whatever a sender announces.
	MaxEntries  = 1 << 16
	maxNameLen  = 4096
	maxCompLen  = 255
	maxTotal    = 1 << 50
	allowedPerm = fs.ModePerm
)

// ManifestError is a manifest the receiver refuses; nothing is written.
type ManifestError struct {
	Name string // entry name, if about one entry
	Msg  string
}

// Refusal marks a ManifestError as a refusal (see IsRefusal).
func (e *ManifestError) Refusal() {}

func (e *ManifestError) Error() string {
	if e.Name != "" {
		return fmt.Sprintf("transfer: refused entry %q: %s", e.Name, e.Msg)
	}
	return "transfer: refused stream: " + e.Msg
}

// CheckName reports why name is not a safe relative path, or nil.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	case !utf8.ValidString(name):
		return errors.New("name is not valid UTF-8")
	case strings.ContainsAny(name, "\x00"):
		return errors.New("name contains NUL")
	case strings.ContainsAny(name, "\n\r"):
		return errors.New("name contains a newline")
	case strings.HasPrefix(name, "/"):
		return errors.New("absolute name")
	case strings.Contains(name, "\\"):
		return errors.New("name contains a backslash")
	}
	for _, c := range strings.Split(name, "/") {
		switch {
		case c == "..":
			return errors.New("name contains '..'")
		case c == "" || c == ".":
			return errors.New("name is not clean (empty or '.' component)")
		case len(c) > maxCompLen:
			return fmt.Errorf("a component is longer than %d bytes", maxCompLen)
		}
	}
	if path.Clean(name) != name {
		return errors.New("name is not clean")
	}
	return nil
}

// Validate checks everything the receiver must check before writing a byte:
// names, types, modes, duplicates, parents declared before children, sizes
// and their total.
func (m *Manifest) Validate() error {
	if m.Version != Version {
		return &ManifestError{Msg: fmt.Sprintf("manifest version %d is not %d", m.Version, Version)}
	}
	if len(m.Entries) > MaxEntries {
		return &ManifestError{Msg: fmt.Sprintf("%d entries is more than the limit of %d", len(m.Entries), MaxEntries)}
	}
	if m.Total < 0 || m.Total > maxTotal {
		return &ManifestError{Msg: fmt.Sprintf("announced total of %d bytes is out of range", m.Total)}
	}
	types := make(map[string]string, len(m.Entries))
	var total int64
	nars := m.narNames()
	if len(nars) > 0 && len(nars) != len(m.Entries) {
		return &ManifestError{Msg: "the stream mixes Nix store paths with files; a stream carries one or the other"}
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := CheckName(e.Name); err != nil {
			return &ManifestError{Name: e.Name, Msg: err.Error()}
		}
		if _, dup := types[e.Name]; dup {
			return &ManifestError{Name: e.Name, Msg: "duplicate name"}
		}
		if e.Type != TypeNAR && (e.References != nil || e.Deriver != "" || e.Sigs != nil || e.CA != "") {
			return &ManifestError{Name: e.Name, Msg: "references, a deriver, signatures or a content address on an entry that is not a store path"}
		}
		if dir, _ := path.Split(e.Name); dir != "" {
			if types[strings.TrimSuffix(dir, "/")] != TypeDir {
				return &ManifestError{Name: e.Name, Msg: "its parent directory is not declared before it"}
			}
		}
		if e.Mode&^allowedPerm != 0 {
			return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("mode %v is not plain permission bits (device files, setuid and the like are refused)", e.Mode)}
		}
		switch e.Type {
		case TypeNAR:
			if err := validateNAR(e, types, nars); err != nil {
				return err
			}
			total += e.Size
			if total > m.Total {
				return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("NAR sizes add up to more than the announced total of %d bytes", m.Total)}
			}
		case TypeDir:
			if e.Size != 0 || e.SHA256 != "" {
				return &ManifestError{Name: e.Name, Msg: "a directory with a size or hash"}
			}
		case TypeFile:
			if e.Size < 0 || e.Size > maxTotal {
				return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("size %d out of range", e.Size)}
			}
			b, err := hex.DecodeString(e.SHA256)
			if err != nil || len(b) != 32 || strings.ToLower(e.SHA256) != e.SHA256 {
				return &ManifestError{Name: e.Name, Msg: "sha256 is not 64 lowercase hex digits"}
			}
			copy(e.sum[:], b)
			total += e.Size
			if total > m.Total {
				return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("file sizes add up to more than the announced total of %d bytes", m.Total)}
			}
		default:
			return &ManifestError{Name: e.Name, Msg: fmt.Sprintf("type %q is not file or dir, nor nar for a store path (symlinks are dereferenced by the sender; devices are never sent)", e.Type)}
		}
		types[e.Name] = e.Type
	}
	if total != m.Total {
		return &ManifestError{Msg: fmt.Sprintf("file sizes add up to %d bytes, not the announced %d", total, m.Total)}
	}
	return nil
}

// readManifest parses and validates a header of n bytes read from r. It
// decodes one entry at a time and stops at the first past MaxEntries, so
// what a sender announces never makes the receiver hold more than the
// limits allow.
func readManifest(r io.Reader, n int64) (*Manifest, error) {
	lr := &io.LimitedReader{R: r, N: n}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	bad := func(err error) error {
		var me *ManifestError
		if errors.As(err, &me) {
			return err
		}
		var le *linkError
		if errors.As(err, &le) {
			return le.err
		}
		if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && lr.N > 0 {
			return io.ErrUnexpectedEOF // the connection, not the JSON, ended
		}
		return &ManifestError{Msg: "header is not a valid manifest: " + err.Error()}
	}
	delim := func(want json.Delim) error {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := t.(json.Delim); !ok || d != want {
			return fmt.Errorf("want %q, got %v", want, t)
		}
		return nil
	}
	var m Manifest
	if err := delim('{'); err != nil {
		return nil, bad(err)
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, bad(err)
		}
		key, _ := t.(string)
		if seen[key] {
			return nil, &ManifestError{Msg: fmt.Sprintf("header names %q twice", key)}
		}
		seen[key] = true
		switch key {
		case "version":
			err = dec.Decode(&m.Version)
		case "total":
			err = dec.Decode(&m.Total)
		case "long":
			err = dec.Decode(&m.Long)
		case "entries":
			err = decodeEntries(dec, &m, delim)
		default:
			err = &ManifestError{Msg: fmt.Sprintf("header has an unknown field %q", key)}
		}
		if err != nil {
			return nil, bad(err)
		}
	}
	if err := delim('}'); err != nil {
		return nil, bad(err)
	}
	// Nothing may follow but white space.
	rest, _ := io.ReadAll(io.MultiReader(dec.Buffered(), lr))
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, &ManifestError{Msg: "header has trailing data"}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func decodeEntries(dec *json.Decoder, m *Manifest, delim func(json.Delim) error) error {
	if err := delim('['); err != nil {
		return err
	}
	for dec.More() {
		if len(m.Entries) == MaxEntries {
			return &ManifestError{Msg: fmt.Sprintf("more than the limit of %d entries; send fewer at once", MaxEntries)}
		}
		var e Entry
		if err := dec.Decode(&e); err != nil {
			return err
		}
		m.Entries = append(m.Entries, e)
	}
	return delim(']')
}
