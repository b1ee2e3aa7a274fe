package remote

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/internal/testsshd"
)

// sshKeygen runs ssh-keygen and fails the test if it fails.
func sshKeygen(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(needTool(t, "ssh-keygen"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newCA makes a certificate authority key with ssh-keygen.
func newCA(t *testing.T, dir, name string) (file string, pub ssh.PublicKey) {
	t.Helper()
	file = filepath.Join(dir, name)
	sshKeygen(t, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", file)
	return file, readPub(t, file+".pub")
}

func readPub(t *testing.T, file string) ssh.PublicKey {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return k
}

// hostCert returns a Prepare function for testsshd.Start that signs the host
// key with ca (ssh-keygen -s) for principals, valid for validity
// (ssh-keygen -V; "" = always), and has sshd present the certificate.
func hostCert(t *testing.T, ca, principals, validity string) func(string) []string {
	return func(hostKey string) []string {
		args := []string{"-q", "-s", ca, "-I", "test-host", "-h", "-n", principals}
		if validity != "" {
			args = append(args, "-V", validity)
		}
		sshKeygen(t, append(args, hostKey+".pub")...)
		return []string{"HostCertificate " + hostKey + "-cert.pub"}
	}
}

func authorizedLine(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// TestHostKeysAgreeWithOpenSSH connects OpenSSH's ssh (BatchMode) and
// nbship to real sshds with the same config and known_hosts files, and
// requires the same decision: connect, or refuse. The sshds present
// plain keys of two types and host certificates made with ssh-keygen -s.
func TestHostKeysAgreeWithOpenSSH(t *testing.T) {
	t.Parallel()
	sshBin := needTool(t, "ssh")
	testsshd.Need(t)
	dir := t.TempDir()
	ca1File, ca1 := newCA(t, dir, "ca1")
	_, ca2 := newCA(t, dir, "ca2")

	// a: ed25519 with a certificate by ca1 for 127.0.0.1 and certalias,
	// and a plain ECDSA key.
	ecFile := filepath.Join(dir, "host_ecdsa")
	sshKeygen(t, "-q", "-t", "ecdsa", "-N", "", "-f", ecFile)
	ecKey := readPub(t, ecFile+".pub")
	a := testsshd.Start(t, testsshd.Options{
		Extra:   []string{"HostKey " + ecFile},
		Prepare: hostCert(t, ca1File, "127.0.0.1,certalias", ""),
	})
	// b: a certificate by ca1 for another name; c: an expired one; d: none.
	b := testsshd.Start(t, testsshd.Options{Prepare: hostCert(t, ca1File, "other.example", "")})
	c := testsshd.Start(t, testsshd.Options{Prepare: hostCert(t, ca1File, "127.0.0.1", "20200101:20200102")})
	d := testsshd.Start(t, testsshd.Options{})

	h := newHome(t)
	for _, s := range []*sshd{a, b, c, d} {
		s.Authorize(h.key.PublicKey())
	}
	otherEd := authorizedLine(randomHostKey(t))
	ecPriv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherEcKey, err := ssh.NewPublicKey(&ecPriv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	otherEc := authorizedLine(otherEcKey)

	name := func(s *sshd) string { return "[127.0.0.1]:" + strconv.Itoa(s.Port) }
	ed := func(s *sshd) string { return authorizedLine(s.HostKey) }

	tests := []struct {
		name      string
		srv       *sshd
		config    []string // more lines for the Host block
		kh        []string
		acceptNew bool
		connect   bool
		kind      string // nbship's refusal: unknown, changed, revoked, revoked-ca, cert
	}{
		{name: "plain [host]:port", srv: a, kh: []string{name(a) + " " + ed(a)}, connect: true},
		{name: "unbracketed host:port never matches", srv: a, kh: []string{"127.0.0.1:" + strconv.Itoa(a.Port) + " " + ed(a)}, kind: "unknown"},
		{name: "host without the port", srv: d, kh: []string{"127.0.0.1 " + ed(d)}, connect: true},
		{name: "host without the port, changed", srv: d, kh: []string{"127.0.0.1 " + otherEd}, kind: "unknown"},
		{name: "the host's own key as a CA", srv: d, kh: []string{"@cert-authority * " + ed(d)}, kind: "unknown"},
		{name: "the host's own key as a CA, certificate presented", srv: a, kh: []string{"@cert-authority * " + ed(a)}, kind: "unknown"},
		{name: "CA for * on another port", srv: a, kh: []string{"@cert-authority * " + authorizedLine(ca1)}, connect: true},
		{name: "CA for [host]:*", srv: a, kh: []string{"@cert-authority [127.0.0.1]:* " + authorizedLine(ca1)}, connect: true},
		{name: "CA for other names", srv: a, kh: []string{"@cert-authority *.example " + authorizedLine(ca1)}, kind: "unknown"},
		{name: "another CA, plain key known", srv: a, kh: []string{"@cert-authority * " + authorizedLine(ca2), name(a) + " " + ed(a)}, connect: true},
		{name: "wildcard *", srv: a, kh: []string{"* " + ed(a)}, connect: true},
		{name: "wildcard [host]:*", srv: a, kh: []string{"[127.0.0.1]:* " + ed(a)}, connect: true},
		{name: "wildcard ?", srv: a, kh: []string{"[127.0.0.?]:" + strconv.Itoa(a.Port) + " " + ed(a)}, connect: true},
		// The name without the port is looked up too, and matches.
		{name: "negated [host]:*", srv: a, kh: []string{"![127.0.0.1]:*,* " + ed(a)}, connect: true},
		{name: "negated both", srv: a, kh: []string{"!127.0.0.1,![127.0.0.1]:*,* " + ed(a)}, kind: "unknown"},
		{name: "negated, uppercase pattern", srv: a, kh: []string{"!127.0.0.1,* " + ed(a), "[LOCALHOST]:* " + otherEd}, connect: true},
		{name: "hashed", srv: a, kh: []string{knownhosts.HashHostname(name(a)) + " " + ed(a)}, connect: true},
		{name: "hashed without the port", srv: a, kh: []string{knownhosts.HashHostname("127.0.0.1") + " " + ed(a)}, connect: true},
		{name: "ECDSA line known", srv: a, kh: []string{name(a) + " " + authorizedLine(ecKey)}, connect: true},
		{name: "a wrong line of another type first", srv: a, kh: []string{name(a) + " " + otherEc, name(a) + " " + ed(a)}, connect: true},
		{name: "a wrong line of the same type first", srv: a, kh: []string{name(a) + " " + otherEd, name(a) + " " + ed(a)}, connect: true},
		{name: "the known type revoked, the other known", srv: a, kh: []string{"@revoked * " + ed(a), name(a) + " " + authorizedLine(ecKey)}, connect: true},
		{name: "revoked and known", srv: a, kh: []string{"@revoked * " + ed(a), name(a) + " " + ed(a)}, kind: "revoked"},
		{name: "revoked key, its certificate's CA trusted", srv: a, kh: []string{"@revoked * " + ed(a), "@cert-authority * " + authorizedLine(ca1)}, kind: "revoked"},
		{name: "revoked CA", srv: a, kh: []string{"@revoked * " + authorizedLine(ca1), "@cert-authority * " + authorizedLine(ca1)}, kind: "revoked-ca"},
		{name: "revoked CA, plain key known", srv: a, kh: []string{"@revoked * " + authorizedLine(ca1), "@cert-authority * " + authorizedLine(ca1), name(a) + " " + ed(a)}, kind: "revoked-ca"},
		{name: "changed", srv: a, kh: []string{name(a) + " " + otherEd}, kind: "changed"},
		{name: "changed, accept-new", srv: a, kh: []string{name(a) + " " + otherEd}, acceptNew: true, kind: "changed"},
		{name: "only an unparsable line", srv: a, kh: []string{"this is not a known_hosts line"}, kind: "unknown"},
		{name: "only an unparsable line, accept-new", srv: a, kh: []string{"this is not a known_hosts line"}, acceptNew: true, connect: true},
		{name: "accept-new from the config", srv: d, config: []string{"StrictHostKeyChecking accept-new"}, connect: true},
		{name: "accept-new, hashed", srv: d, config: []string{"StrictHostKeyChecking accept-new", "HashKnownHosts yes"}, connect: true},
		{name: "HostKeyAlias", srv: a, config: []string{"HostKeyAlias myalias"}, kh: []string{"myalias " + ed(a)}, connect: true},
		{name: "HostKeyAlias not a principal", srv: a, config: []string{"HostKeyAlias myalias"}, kh: []string{"@cert-authority myalias " + authorizedLine(ca1)}, kind: "cert"},
		{name: "HostKeyAlias a principal", srv: a, config: []string{"HostKeyAlias CertAlias"}, kh: []string{"@cert-authority certalias " + authorizedLine(ca1)}, connect: true},
		{name: "wrong principal", srv: b, kh: []string{"@cert-authority * " + authorizedLine(ca1)}, kind: "cert"},
		{name: "wrong principal, plain key known", srv: b, kh: []string{"@cert-authority * " + authorizedLine(ca1), name(b) + " " + ed(b)}, connect: true},
		{name: "expired certificate", srv: c, kh: []string{"@cert-authority * " + authorizedLine(ca1)}, kind: "cert"},
		{name: "comments, blank lines and a bad marker", srv: a, kh: []string{"# c", "", "@bogus * " + ed(a), "   " + name(a) + " " + ed(a) + " a comment"}, connect: true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caseDir := filepath.Join(h.dir, "case"+strconv.Itoa(i))
			if err := os.MkdirAll(caseDir, 0o700); err != nil {
				t.Fatal(err)
			}
			kh := filepath.Join(caseDir, "known_hosts")
			config := filepath.Join(caseDir, "config")
			lines := append([]string{
				"Host target",
				"  HostName 127.0.0.1",
				"  Port " + strconv.Itoa(tt.srv.Port),
				"  User root",
				"  IdentityFile " + filepath.Join(h.ssh, "id_ed25519"),
				"  IdentitiesOnly yes",
				"  UserKnownHostsFile " + kh,
				"  GlobalKnownHostsFile /dev/null",
				"  BatchMode yes",
			}, tt.config...)
			if err := os.WriteFile(config, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			writeKH := func() {
				t.Helper()
				text := ""
				if len(tt.kh) > 0 {
					text = strings.Join(tt.kh, "\n") + "\n"
				}
				if err := os.WriteFile(kh, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			writeKH()
			args := []string{"-F", config, "-o", "ConnectTimeout=10"}
			if tt.acceptNew {
				args = append(args, "-o", "StrictHostKeyChecking=accept-new")
			}
			cmd := exec.Command(sshBin, append(args, "target", "true")...)
			cmd.Stdin = nil
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			sshErr := cmd.Run()
			if got := sshErr == nil; got != tt.connect {
				t.Fatalf("OpenSSH connected = %v, this test expected %v: %v\n%s", got, tt.connect, sshErr, stderr.String())
			}
			sshKH, _ := os.ReadFile(kh)

			for _, builtin := range []bool{false, true} {
				writeKH()
				cfg := Config{Home: h.dir, SSHConfig: config, AcceptNew: tt.acceptNew, ConnectTimeout: 10 * time.Second, Log: h.log, BuiltinSSHConfig: builtin}
				err := dialThenTouch(t, h, "target", cfg, filepath.Join(caseDir, "ran"))
				if got := err == nil; got != tt.connect {
					t.Errorf("nbship (built-in parser %v) connected = %v, OpenSSH %v: %v\nOpenSSH said: %s", builtin, got, tt.connect, err, stderr.String())
					continue
				}
				if err == nil {
					if tt.acceptNew || len(tt.kh) == 0 {
						got, _ := os.ReadFile(kh)
						hashed := strings.Contains(strings.Join(tt.config, " "), "HashKnownHosts yes")
						for _, b := range [][]byte{got, sshKH} {
							if !bytes.Contains(b, []byte(ed(tt.srv))) || bytes.Contains(b, []byte("|1|")) != hashed {
								t.Errorf("known_hosts after accept-new: nbship\n%s\nOpenSSH\n%s", got, sshKH)
							}
						}
					}
					continue
				}
				var hk *HostKeyError
				if !errors.As(err, &hk) {
					t.Errorf("nbship (built-in parser %v) = %v, want a *HostKeyError", builtin, err)
					continue
				}
				kind := "unknown"
				switch {
				case hk.Revoked && hk.Authority != "":
					kind = "revoked-ca"
				case hk.Revoked:
					kind = "revoked"
				case hk.Changed:
					kind = "changed"
				case hk.Cert != "":
					kind = "cert"
				}
				if kind != tt.kind {
					t.Errorf("nbship (built-in parser %v) refused as %s, want %s: %v", builtin, kind, tt.kind, err)
				}
			}
			if _, err := os.Stat(filepath.Join(caseDir, "ran")); err == nil && !tt.connect {
				t.Error("a command ran on a refused host")
			}
		})
	}
}
