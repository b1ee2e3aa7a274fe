package kexec

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshServer answers SSH handshakes on loopback with key until closed.
func sshServer(t *testing.T, key ed25519.PrivateKey) (addr string, stop func()) {
	t.Helper()
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(signer)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				ssh.NewServerConn(c, cfg)
			}()
		}
	}()
	return ln.Addr().String(), func() { ln.Close() }
}

func newKey(t *testing.T) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func fingerprint(t *testing.T, k ed25519.PrivateKey) string {
	pub, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(pub)
}

func noFailure() error { return nil }

// The wait ends when the host answers as a new system: with a new host
// key (however quickly it came back), and not while the old system goes
// on answering with its key. A host that does not answer at all is a
// NoAnswerError that says it went down.
func TestWaitSSH(t *testing.T) {
	old, next := newKey(t), newKey(t)
	oldFP := fingerprint(t, old)

	addr, stop := sshServer(t, next)
	res, err := waitSSH(context.Background(), Result{Host: "h"}, addr, oldFP, time.Now(), time.Minute, noFailure)
	stop()
	if err != nil || !res.Answered || res.HostKey != fingerprint(t, next) || res.Banner == "" {
		t.Errorf("waitSSH(new key) = %+v, %v; want answered with %s", res, err, fingerprint(t, next))
	}
	if got, _ := HostKey(context.Background(), addr); got != "" {
		t.Errorf("HostKey of a closed port = %q", got)
	}

	addr, stop = sshServer(t, old)
	res, err = waitSSH(context.Background(), Result{Host: "h"}, addr, oldFP, time.Now(), 2*time.Second, noFailure)
	stop()
	var na *NoAnswerError
	if !errors.As(err, &na) || na.Down || res.Answered {
		t.Errorf("waitSSH(old key on) = %+v, %v; want a NoAnswerError, not down", res, err)
	}

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr = ln.Addr().String()
	ln.Close()
	res, err = waitSSH(context.Background(), Result{Host: "h"}, addr, oldFP, time.Now(), 2*time.Second, noFailure)
	if !errors.As(err, &na) || !na.Down || res.Answered {
		t.Errorf("waitSSH(nothing listening) = %+v, %v; want a NoAnswerError after going down", res, err)
	}

	failed := errors.New("kexec -e failed")
	_, err = waitSSH(context.Background(), Result{Host: "h"}, addr, oldFP, time.Now(), time.Minute, func() error { return failed })
	if !errors.Is(err, failed) {
		t.Errorf("waitSSH(failed kexec) = %v, want %v", err, failed)
	}
}
