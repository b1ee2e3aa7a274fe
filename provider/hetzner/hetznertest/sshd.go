package hetznertest

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/internal/testsshd"
)

// SSHD is a real OpenSSH server on 127.0.0.1 that plays a new server's
// rescue system: it lets root in with the key in Client/.ssh/id_ed25519.
type SSHD struct {
	*testsshd.Server
	Client string // a client home: .ssh/id_ed25519 (and .pub), no known_hosts yet
	PubKey string // the client key's authorized_keys line
}

// StartSSHD starts sshd; it is stopped when the test ends. Without root
// or sshd the test is skipped (a failure where NBSHIP_REQUIRE_RIG=1).
func StartSSHD(t testing.TB) *SSHD {
	t.Helper()
	s := &SSHD{Server: testsshd.Start(t, testsshd.Options{}), Client: filepath.Join(t.TempDir(), "home")}
	_, key := testsshd.WriteKey(t, filepath.Join(s.Client, ".ssh", "id_ed25519"), "")
	s.Authorize(key.PublicKey())
	s.PubKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key.PublicKey())))
	return s
}
