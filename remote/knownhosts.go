package remote

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"strings"

	"golang.org/x/crypto/ssh"
)

// known_hosts, read as OpenSSH's hostfile.c reads it.

type khMarker int

const (
	markNone khMarker = iota
	markCA
	markRevoked
)

// khEntry is one usable line of a known_hosts file.
type khEntry struct {
	file   string
	line   int
	marker khMarker
	names  string // the host pattern field: a pattern list, or |1|salt|hash
	key    ssh.PublicKey
}

// parseKnownHosts returns the usable lines of a known_hosts file. Lines
// OpenSSH would skip (an unknown marker, a key it cannot read, too few
// fields) are skipped here too.
func parseKnownHosts(file string, data []byte) []khEntry {
	var out []khEntry
	n := 0
	for len(data) > 0 {
		n++
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		if e, ok := parseKnownHostsLine(string(line)); ok {
			e.file, e.line = file, n
			out = append(out, e)
		}
	}
	return out
}

func parseKnownHostsLine(line string) (khEntry, bool) {
	var e khEntry
	s := strings.TrimLeft(line, " \t")
	if s == "" || s[0] == '#' {
		return e, false
	}
	if s[0] == '@' {
		m, rest, ok := cutBlank(s)
		if !ok {
			return e, false
		}
		switch m {
		case "@cert-authority":
			e.marker = markCA
		case "@revoked":
			e.marker = markRevoked
		default:
			return e, false
		}
		s = rest
		if strings.HasPrefix(s, "@") {
			return e, false // only one marker
		}
	}
	names, rest, ok := cutBlank(s)
	if !ok || names == "" {
		return e, false
	}
	typ, rest, ok := cutBlank(rest)
	if !ok {
		return e, false
	}
	b64, _, _ := cutBlank(rest + " ")
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return e, false
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil || key.Type() != typ {
		return e, false
	}
	if _, isCert := key.(*ssh.Certificate); isCert {
		return e, false
	}
	e.names, e.key = names, key
	return e, true
}

// cutBlank splits s at its first run of blanks.
func cutBlank(s string) (before, after string, ok bool) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, "", false
	}
	return s[:i], strings.TrimLeft(s[i:], " \t"), true
}

// matches reports whether the entry's names match host (a known_hosts
// lookup name: host, [host]:port or a HostKeyAlias), as OpenSSH's
// match_maybe_hashed does.
func (e *khEntry) matches(host string) bool {
	if strings.HasPrefix(e.names, "|") {
		return matchHashed(host, e.names)
	}
	return matchHostname(host, e.names)
}

// matchHashed checks host against |1|base64(salt)|base64(HMAC-SHA1(salt, host)).
func matchHashed(host, names string) bool {
	parts := strings.Split(names, "|")
	if len(parts) != 4 || parts[0] != "" || parts[1] != "1" {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(salt) != sha1.Size {
		return false
	}
	want, err := base64.StdEncoding.DecodeString(parts[3])
	if err != nil {
		return false
	}
	m := hmac.New(sha1.New, salt)
	m.Write([]byte(host))
	return hmac.Equal(m.Sum(nil), want)
}

// hostStatus is what check_hostkeys_by_key_or_type decides.
type hostStatus int

const (
	hostNew hostStatus = iota
	hostOK
	hostChanged
	hostRevoked
)

// check decides key against the entries that match one lookup name. For
// a certificate only @cert-authority lines count (the CA must have signed
// it); for a plain key only plain lines, and any other plain key there
// makes it changed. A key or CA named by a matching @revoked line is
// revoked whatever else matched. found is the line that decided.
func check(entries []khEntry, key ssh.PublicKey) (hostStatus, *khEntry) {
	cert, isCert := key.(*ssh.Certificate)
	want := markNone
	if isCert {
		want = markCA
	}
	status := hostNew
	var found *khEntry
	for i := range entries {
		e := &entries[i]
		if e.marker != want {
			continue
		}
		if isCert {
			if keysEqual(cert.SignatureKey, e.key) {
				status, found = hostOK, e
				break
			}
			continue
		}
		if keysEqual(key, e.key) {
			status, found = hostOK, e
			break
		}
		if status != hostChanged || found.key.Type() != key.Type() && e.key.Type() == key.Type() {
			found = e // the line to name: one of the same type if there is one
		}
		status = hostChanged
	}
	for i := range entries {
		e := &entries[i]
		if e.marker != markRevoked {
			continue
		}
		if keysEqual(key, e.key) || isCert && keysEqual(cert.Key, e.key) || isCert && keysEqual(cert.SignatureKey, e.key) {
			return hostRevoked, e
		}
	}
	return status, found
}

func keysEqual(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}
