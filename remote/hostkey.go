package remote

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyError is returned by Dial when a host's key is not known, has
// changed or is revoked, or its host certificate is not valid. The
// connection is refused before any authentication or command.
type HostKeyError struct {
	Host        string // the host as named by the caller (or the jump host)
	Addr        string // the name looked up in known_hosts: host, [host]:port or the HostKeyAlias
	Fingerprint string // of the presented key, SHA256:... as ssh-keygen prints it
	KeyType     string // of the presented key, e.g. ssh-ed25519
	File        string // changed: the known_hosts file with the old key; unknown: where to add it
	Line        int    // changed or revoked: the line of File
	Changed     bool   // the host is known with a different key
	Revoked     bool   // the presented key (or Authority) is marked @revoked
	Authority   string // revoked: the fingerprint of the revoked CA that signed the host certificate
	Cert        string // why the host's certificate was not accepted, if it presented one
}

func (e *HostKeyError) Error() string {
	switch {
	case e.Revoked && e.Authority != "":
		return fmt.Sprintf("ssh: %s (%s): the certificate authority %s that signed its host certificate is REVOKED (line %d of %s); refusing to connect",
			e.Host, e.Addr, e.Authority, e.Line, e.File)
	case e.Revoked:
		return fmt.Sprintf("ssh: %s (%s): host key %s %s is REVOKED (line %d of %s); refusing to connect",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.Line, e.File)
	case e.Changed:
		return fmt.Sprintf("ssh: %s (%s): the host key CHANGED — possible man-in-the-middle; it now presents %s %s; if the host was reinstalled remove line %d of %s",
			e.Host, e.Addr, e.KeyType, e.Fingerprint, e.Line, e.File)
	case e.Cert != "":
		return fmt.Sprintf("ssh: %s (%s): its host certificate is not accepted: %s; and its host key %s %s is not known; fix the certificate or verify the fingerprint and add the key with ssh-keyscan, or pass --accept-new",
			e.Host, e.Addr, e.Cert, e.KeyType, e.Fingerprint)
	default:
		return fmt.Sprintf("ssh: %s (%s): unknown host key %s %s; verify the fingerprint and add it with ssh-keyscan, or pass --accept-new",
			e.Host, e.Addr, e.KeyType, e.Fingerprint)
	}
}

// hostKeys decides one host's key as OpenSSH's check_host_key does.
type hostKeys struct {
	host      string // for messages
	name      string // the known_hosts lookup name
	hostname  string // without port: the certificate principal, and the lookup name of last resort
	portless  bool   // the key may also be found under hostname alone (no alias, port not 22)
	principal string
	writeTo   string // user file AcceptNew appends to
	acceptNew bool
	hashName  bool // write the name hashed (HashKnownHosts)
	log       io.Writer
	algos     string
	entries   []khEntry // every usable line of every file
}

func newHostKeys(t *target, cfg Config, log io.Writer) (*hostKeys, error) {
	h := &hostKeys{
		host:      t.dest,
		name:      t.keyName(),
		hostname:  t.hostname,
		portless:  t.hostKeyAlias == "" && t.port != 22,
		principal: t.hostname,
		writeTo:   t.knownHosts[0],
		acceptNew: cfg.AcceptNew || t.acceptNew,
		hashName:  t.hashKnown,
		log:       log,
		algos:     t.hostKeyAlgorithms,
	}
	if t.hostKeyAlias != "" {
		h.principal = t.hostKeyAlias
	}
	if log == nil {
		h.log = io.Discard
	}
	for _, f := range append(slices.Clone(t.knownHosts), t.globalKnown...) {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ssh: known hosts: %w", err)
		}
		h.entries = append(h.entries, parseKnownHosts(f, b)...)
	}
	return h, nil
}

// lookup returns the lines whose names match name.
func (h *hostKeys) lookup(name string) []khEntry {
	var out []khEntry
	for _, e := range h.entries {
		if e.matches(name) {
			out = append(out, e)
		}
	}
	return out
}

// plainType is the key type behind a host key algorithm name.
func plainType(alg string) string {
	alg = strings.TrimSuffix(alg, "-cert-v01@openssh.com")
	switch alg {
	case ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSASHA512:
		return ssh.KeyAlgoRSA
	}
	return alg
}

// algorithms orders the host key algorithms as OpenSSH's
// order_hostkeyalgs does: if a plain key of the type of the first
// algorithm is known, the configured list as it is; otherwise the
// algorithms of the known (unrevoked) key types first, and the
// certificate ones too when a @cert-authority line matches, keeping the
// configured order. Those Go cannot use are left out.
func (h *hostKeys) algorithms() []string {
	list := strings.Split(h.algos, ",")
	if h.algos == "" {
		list = strings.Split(defaultHostKeyAlgorithms, ",")
	}
	entries := h.lookup(h.name)
	known := map[string]bool{}
	hasCA := false
	for _, e := range entries {
		switch e.marker {
		case markNone:
			known[e.key.Type()] = true
		case markCA:
			hasCA = true
		}
	}
	ordered := list
	if len(list) > 0 && !known[plainType(list[0])] {
		var first, last []string
		for _, a := range list {
			if strings.HasSuffix(a, "-cert-v01@openssh.com") && hasCA || known[plainType(a)] {
				first = append(first, a)
			} else {
				last = append(last, a)
			}
		}
		ordered = append(first, last...)
	}
	// ssh-rsa (SHA-1) and DSA only when the config names them, as in
	// OpenSSH's default list they are not.
	supported := append(ssh.SupportedAlgorithms().HostKeys, ssh.InsecureAlgorithms().HostKeys...)
	var out []string
	for _, a := range ordered {
		if slices.Contains(supported, a) && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// callback returns the HostKeyCallback for the handshake. Its error is
// also stored in *refused, so that Dial can return it as it is rather than
// wrapped in the handshake's.
func (h *hostKeys) callback(refused *error) ssh.HostKeyCallback {
	return func(_ string, _ net.Addr, key ssh.PublicKey) error {
		err := h.verify(key)
		if err != nil {
			*refused = err
		}
		return err
	}
}

// decide is check_host_key without the accept-new part: the status of
// key under the lookup name, then (as OpenSSH does when a key is new on a
// port other than 22) under the host name alone, where only a match
// counts. A certificate is judged by its CA; one not accepted is judged
// again as its plain key, and certProblem says why.
func (h *hostKeys) decide(key ssh.PublicKey) (status hostStatus, found *khEntry, certProblem string, plain ssh.PublicKey) {
	plain = key
	if cert, ok := key.(*ssh.Certificate); ok {
		status, found = check(h.lookup(h.name), cert)
		if status == hostNew && h.portless {
			if st, f := check(h.lookup(h.hostname), cert); st == hostOK {
				status, found = st, f
			}
		}
		switch status {
		case hostRevoked:
			return status, found, "", key
		case hostOK:
			if certProblem = h.checkCert(cert); certProblem == "" {
				return hostOK, found, "", key
			}
		}
		plain = cert.Key
	}
	status, found = check(h.lookup(h.name), plain)
	if status == hostNew && h.portless {
		if st, f := check(h.lookup(h.hostname), plain); st == hostOK {
			status, found = st, f
		}
	}
	return status, found, certProblem, plain
}

// checkCert checks a host certificate whose CA is trusted: a host
// certificate, for this name, valid now, with a signature by the CA.
func (h *hostKeys) checkCert(cert *ssh.Certificate) string {
	if cert.CertType != ssh.HostCert {
		return "it is not a host certificate"
	}
	if cert.Signature != nil && cert.Signature.Format == ssh.KeyAlgoRSA {
		return "it is signed with ssh-rsa (SHA-1), which OpenSSH no longer accepts from a CA"
	}
	if len(cert.ValidPrincipals) > 0 && !slices.Contains(cert.ValidPrincipals, h.principal) {
		return fmt.Sprintf("%q is not one of its principals (%s)", h.principal, strings.Join(cert.ValidPrincipals, ", "))
	}
	c := &ssh.CertChecker{SupportedCriticalOptions: nil}
	if err := c.CheckCert(h.principal, cert); err != nil {
		return strings.TrimPrefix(err.Error(), "ssh: ")
	}
	return ""
}

func (h *hostKeys) verify(key ssh.PublicKey) error {
	status, found, certProblem, plain := h.decide(key)
	if status == hostOK {
		return nil
	}
	e := &HostKeyError{
		Host:        h.host,
		Addr:        h.name,
		Fingerprint: ssh.FingerprintSHA256(plain),
		KeyType:     plain.Type(),
		File:        h.writeTo,
		Cert:        certProblem,
	}
	switch status {
	case hostRevoked:
		e.Revoked = true
		e.File, e.Line = found.file, found.line
		if cert, ok := key.(*ssh.Certificate); ok && keysEqual(cert.SignatureKey, found.key) {
			e.Authority = ssh.FingerprintSHA256(found.key)
		}
	case hostChanged:
		e.Changed = true
		e.File, e.Line = found.file, found.line
	case hostNew:
		if h.acceptNew {
			return h.add(plain)
		}
	}
	return e
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
	name := h.name
	if h.hashName {
		name = knownhosts.HashHostname(name)
	}
	line := name + " " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))) + "\n"
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
		h.host, key.Type(), ssh.FingerprintSHA256(key), h.name, h.writeTo)
	return nil
}
