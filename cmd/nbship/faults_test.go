package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/tunnel"
)

// flipProxy forwards one connection to target and flips one bit of the
// sender's bytes after skip bytes, as a broken or hostile middlebox would.
func flipProxy(t *testing.T, target string, skip int64) (addr string, flipped *atomic.Bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	flipped = new(atomic.Bool)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		u, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer u.Close()
		go func() { io.Copy(c, u); c.Close() }()
		buf := make([]byte, 32<<10)
		var seen int64
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if !flipped.Load() && seen+int64(n) > skip {
					buf[skip-seen] ^= 0x10
					flipped.Store(true)
				}
				seen += int64(n)
				if _, werr := u.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				u.(*net.TCPConn).CloseWrite()
				return
			}
		}
	}()
	return ln.Addr().String(), flipped
}

func TestByteFlippedInFlightIsRefused(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "Image", randomBytes(t, 4<<20))
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	r, rfp, addr := startRecv(t, bin, "--dest", dest, "--accept-timeout", "10s")
	// Well past the handshake, inside the data.
	proxy, flipped := flipProxy(t, addr, 1<<20)
	s, sfp := startSender(t, bin, proxy, src)
	r.stdin.Write([]byte(sfp + "\n"))
	s.stdin.Write([]byte(rfp + "\n"))
	_, serr := s.wait(t)
	_, rerr := r.wait(t)
	if !flipped.Load() {
		t.Fatal("the proxy never flipped a byte")
	}
	if serr == nil || rerr == nil {
		t.Fatalf("sender %v, recv %v: want both to fail on a flipped byte", serr, rerr)
	}
	// TLS's record authentication catches it before any hash could.
	if msg := r.stderr.String(); !strings.Contains(msg, "tls: ") && !strings.Contains(msg, "authentication") {
		t.Errorf("recv stderr = %q, want a TLS record error", msg)
	}
	assertNoLeftovers(t, parent)
}

func TestThirdPartyFirstDoesNotLockOutTheSender(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "Image", []byte("the real kernel"))
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	r, rfp, addr := startRecv(t, bin, "--dest", dest, "--accept-timeout", "20s")
	s, sfp := startSender(t, bin, addr, src)
	r.stdin.Write([]byte(sfp + "\n"))

	// Someone who learned the receiver's pin (it is not secret) connects
	// first, with a certificate of its own, and tries to send.
	intruder, err := tunnel.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c, err := tunnel.Dial(ctx, addr, intruder, strings.TrimPrefix(rfp, "fingerprint ")); err == nil {
		c.Write([]byte("NBSHIP\x00\x00\x02"))
		buf := make([]byte, 64)
		_, rerr := c.Read(buf)
		c.Close()
		if rerr == nil {
			t.Errorf("the receiver talked to an intruder")
		}
	}
	// A port scanner too.
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Write([]byte("SSH-2.0-scan\r\n"))
		c.Close()
	}
	// Now the real sender gets its pin and goes through.
	s.stdin.Write([]byte(rfp + "\n"))
	_, serr := s.wait(t)
	_, rerr := r.wait(t)
	if serr != nil || rerr != nil {
		t.Fatalf("sender %v (%s), recv %v (%s)", serr, s.stderr, rerr, r.stderr)
	}
	if !strings.Contains(r.stderr.String(), "fingerprint mismatch") || !strings.Contains(r.stderr.String(), intruder.Pin()) {
		t.Errorf("recv stderr %q does not report the intruder's refused pin", r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "Image")); string(b) != "the real kernel" {
		t.Errorf("Image = %q, want the sender's", b)
	}
}

// Connections that send nothing (here: open before the sender, and never
// closed) do not hold up the real sender: the receiver handshakes them side
// by side with it.
func TestIdleConnectionsDoNotLockOutTheSender(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "Image", []byte("the real kernel"))
	parent := t.TempDir()
	dest := filepath.Join(parent, "out")
	r, rfp, addr := startRecv(t, bin, "--dest", dest, "--accept-timeout", "60s")
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	s, sfp := startSender(t, bin, addr, src)
	r.stdin.Write([]byte(sfp + "\n"))
	s.stdin.Write([]byte(rfp + "\n"))
	_, serr := s.wait(t)
	_, rerr := r.wait(t)
	if serr != nil || rerr != nil {
		t.Fatalf("sender %v (%s), recv %v (%s)", serr, s.stderr, rerr, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "Image")); string(b) != "the real kernel" {
		t.Errorf("Image = %q, want the sender's", b)
	}
}

// An end whose peer stops sending (here: the sender is stopped, SIGSTOP,
// mid-stream) gives up after --idle-timeout with the documented line, not
// the error of the connection it closed to stop.
func TestIdleTimeoutSaysSo(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "big", randomBytes(t, 64<<20))
	parent := t.TempDir()
	r, rfp, addr := startRecv(t, bin, "--dest", filepath.Join(parent, "out"), "--idle-timeout", "2s")
	s, sfp := startSender(t, bin, addr, "--level", "better", src)
	r.stdin.Write([]byte(sfp + "\n"))
	s.stdin.Write([]byte(rfp + "\n"))
	if l := s.line(t); !strings.HasPrefix(l, "connected ") {
		t.Fatalf("sender said %q, want connected", l)
	}
	s.cmd.Process.Signal(syscall.SIGSTOP)
	_, rerr := r.wait(t)
	s.cmd.Process.Signal(syscall.SIGCONT)
	s.cmd.Process.Kill()
	if rerr == nil {
		t.Fatal("recv succeeded with a stopped sender")
	}
	const want = "nbship: recv: nothing crossed the channel for 2s: the other end, its host or the link is gone"
	if got := strings.TrimSpace(r.stderr.String()); !strings.HasSuffix(got, want) {
		t.Errorf("recv stderr = %q, want it to end with %q", got, want)
	}
	assertNoLeftovers(t, parent)
}
