package remote

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyError is returned by Dial when a host's key is not known, has
// changed or is revoked. The connection is refused before any
// authentication or command.
type HostKeyError struct {
	Host        string // the host as named by the caller (or the jump host)
	Addr        string // host:port as looked up in known_hosts
	Fingerprint string // of the presented key, SHA256:... as ssh-keygen prints it
	KeyType     string // of the presented key, e.g. ssh-ed25519
	File        string // changed: the known_hosts file with the old key; unknown: where to add it
	Line        int    // changed or revoked: the line of File
	Changed     bool   // the host is known with a different key
	Revoked     bool   // the presented key is marked @revoked
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked:
		return fmt.Sprintf("ssh: %s (%s): host key %s %s is REVOKED (line %d of %s); refusing to connect",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.Line, e.File)
	case e.Changed:
		return fmt.Sprintf("ssh: %s (%s): the host key CHANGED — possible man-in-the-middle; it now presents %s %s; if the host was reinstalled remove line %d of %s",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.Line, e.File)
	default:
		return fmt.Sprintf("ssh: %s (%s): unknown host key %s %s; verify the fingerprint and add it with ssh-keyscan, or pass --accept-new",
			e.Host, e.Addr, e.KeyType, e.Fingerprint)
	}
}

// hostKeys checks one host's key against the known_hosts files.
type hostKeys struct {
	host      string // for messages
	addr      string // known_hosts address (HostKeyAlias or HostName, port)
	files     []string
	writeTo   string // user file AcceptNew appends to
	acceptNew bool
	log       io.Writer
	check     ssh.HostKeyCallback
	hasCA     bool // some file has a @cert-authority line
}

func newHostKeys(t *target, cfg Config, log io.Writer) (*hostKeys, error) {
	h := &hostKeys{
		host:      t.dest,
		addr:      t.keyAddr(),
		writeTo:   t.knownHosts[0],
		acceptNew: cfg.AcceptNew,
		log:       log,
	}
	for _, f := range append(slices.Clone(t.knownHosts), t.globalKnown...) {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ssh: known hosts: %w", err)
		}
		h.files = append(h.files, f)
		if bytes.Contains(b, []byte("@cert-authority")) {
			h.hasCA = true
		}
	}
	if len(h.files) == 0 {
		h.check = func(string, net.Addr, ssh.PublicKey) error { return &knownhosts.KeyError{} }
		return h, nil
	}
	cb, err := knownhosts.New(h.files...)
	if err != nil {
		return nil, fmt.Errorf("ssh: known hosts: %w", err)
	}
	h.check = cb
	return h, nil
}

// probeKey is a key no known_hosts line holds: checking it makes
// knownhosts list every key it has for a host.
var probeKey = func() ssh.PublicKey {
	k, err := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, ed25519.PublicKeySize)))
	if err != nil {
		panic(err)
	}
	return k
}()

// known returns the keys known_hosts holds for the host.
func (h *hostKeys) known() []knownhosts.KnownKey {
	var ke *knownhosts.KeyError
	if errors.As(h.check(h.addr, fakeAddr(h.addr), probeKey), &ke) {
		return ke.Want
	}
	return nil
}

// algorithms orders host key algorithms so that the server presents a key
// type we already know for it (an ed25519 entry is useless if the server
// offers its ECDSA key first). Certificates come first only when some
// known_hosts file names a certificate authority.
func (h *hostKeys) algorithms() []string {
	supported := ssh.SupportedAlgorithms().HostKeys
	var out []string
	add := func(algos ...string) {
		for _, a := range algos {
			if slices.Contains(supported, a) && !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	if h.hasCA {
		add(ssh.CertAlgoED25519v01, ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01,
			ssh.CertAlgoECDSA521v01, ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01)
	}
	for _, k := range h.known() {
		switch k.Key.Type() {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		default:
			add(k.Key.Type())
		}
	}
	add(ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
	return out
}

// callback returns the HostKeyCallback for the handshake. Its error is
// also stored in *refused, so that Dial can return it as it is rather than
// wrapped in the handshake's.
func (h *hostKeys) callback(refused *error) ssh.HostKeyCallback {
	return func(_ string, remote net.Addr, key ssh.PublicKey) error {
		err := h.verify(remote, key)
		if err != nil {
			*refused = err
		}
		return err
	}
}

func (h *hostKeys) verify(remote net.Addr, key ssh.PublicKey) error {
	err := h.check(h.addr, remote, key)
	if cert, ok := key.(*ssh.Certificate); ok && err != nil && !isKeyOrRevoked(err) {
		// A host certificate from an authority we do not trust:
		// judge the plain key inside it, as OpenSSH does.
		key = cert.Key
		err = h.check(h.addr, remote, key)
	}
	if err == nil {
		return nil
	}
	e := &HostKeyError{
		Host:        h.host,
		Addr:        knownhosts.Normalize(h.addr),
		Fingerprint: ssh.FingerprintSHA256(key),
		KeyType:     key.Type(),
		File:        h.writeTo,
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		e.Revoked = true
		e.File, e.Line = re.Revoked.Filename, re.Revoked.Line
	case errors.As(err, &ke) && len(ke.Want) > 0:
		// Known, but not with this key. Name the line that holds a key
		// of the same type if there is one.
		e.Changed = true
		w := ke.Want[0]
		for _, k := range ke.Want {
			if k.Key.Type() == key.Type() {
				w = k
				break
			}
		}
		e.File, e.Line = w.Filename, w.Line
	case errors.As(err, &ke):
		if h.acceptNew {
			return h.add(key)
		}
	default:
		return fmt.Errorf("ssh: %s: checking host key: %w", h.host, err)
	}
	return e
}

func isKeyOrRevoked(err error) bool {
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	return errors.As(err, &ke) || errors.As(err, &re)
}

// add appends key for the host to the user known_hosts file, like
// StrictHostKeyChecking=accept-new.
func (h *hostKeys) add(key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(h.writeTo), 0o700); err != nil {
		return fmt.Errorf("ssh: %s: adding host key: %w", h.host, err)
	}
	f, err := os.OpenFile(h.writeTo, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("ssh: %s: adding host key: %w", h.host, err)
	}
	line := knownhosts.Line([]string{h.addr}, key) + "\n"
	// Start on a new line if the file does not end with one.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if r, err := os.Open(h.writeTo); err == nil {
			if _, err := r.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
				line = "\n" + line
			}
			r.Close()
		}
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("ssh: %s: adding host key: %w", h.host, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("ssh: %s: adding host key: %w", h.host, err)
	}
	fmt.Fprintf(h.log, "ssh: %s: added new host key %s %s for %s to %s\n",
		h.host, key.Type(), ssh.FingerprintSHA256(key), knownhosts.Normalize(h.addr), h.writeTo)
	return nil
}

// fakeAddr makes a net.Addr for addr; knownhosts only splits its string.
func fakeAddr(addr string) net.Addr {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return &net.TCPAddr{IP: net.ParseIP(strings.Trim(host, "[]")), Port: p}
}
