package metaltest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"net"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Ed25519Signer is an ed25519 host key made from seed, the same on every
// run, so golden files holding its public key stay put.
func Ed25519Signer(t testing.TB, seed string) ssh.Signer {
	t.Helper()
	sum := sha256.Sum256([]byte(seed))
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(sum[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SSHServer is an SSH server on 127.0.0.1 that presents its host keys and
// lets no one in: enough to read host keys from.
type SSHServer struct {
	Addr string // 127.0.0.1:PORT
	Port int
}

// NewSSHServer starts an SSH server with the given host keys; it stops
// when the test ends.
func NewSSHServer(t testing.TB, hostKeys ...ssh.Signer) *SSHServer {
	t.Helper()
	cfg := &ssh.ServerConfig{
		PasswordCallback: func(ssh.ConnMetadata, []byte) (*ssh.Permissions, error) {
			return nil, errors.New("no")
		},
	}
	for _, k := range hostKeys {
		cfg.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				// The clients under test abandon the handshake after the
				// host key, so this ends with an error.
				if sc, _, _, err := ssh.NewServerConn(c, cfg); err == nil {
					sc.Close()
				}
			}()
		}
	}()
	return &SSHServer{Addr: ln.Addr().String(), Port: ln.Addr().(*net.TCPAddr).Port}
}

// BannerServer writes an SSH banner to every connection, like sshd before
// the key exchange. It can go away (connections refused), come back on the
// same address, and answer a few connections without a banner, to play a
// rebooting host.
type BannerServer struct {
	Addr   string
	Banner string

	mu     sync.Mutex
	ln     net.Listener
	silent int // connections still to close without a banner
	wg     sync.WaitGroup
}

// NewBannerServer starts a banner server on 127.0.0.1; it stops when the
// test ends.
func NewBannerServer(t testing.TB) *BannerServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &BannerServer{Addr: ln.Addr().String(), Banner: "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"}
	b.serve(ln)
	t.Cleanup(func() { b.GoAway(); b.wg.Wait() })
	return b
}

func (b *BannerServer) serve(ln net.Listener) {
	b.mu.Lock()
	b.ln = ln
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			quiet := b.silent > 0
			if quiet {
				b.silent--
			}
			b.mu.Unlock()
			if !quiet {
				c.Write([]byte("some servers say things first\r\n" + b.Banner + "\r\n"))
			}
			c.Close()
		}
	}()
}

// GoAway closes the listener: connections are refused.
func (b *BannerServer) GoAway() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
}

// ComeBack listens on the same address again; the first silent
// connections get no banner.
func (b *BannerServer) ComeBack(silent int) error {
	ln, err := net.Listen("tcp", b.Addr)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.silent = silent
	b.mu.Unlock()
	b.serve(ln)
	return nil
}
