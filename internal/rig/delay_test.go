package rig

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs f on a thread that has entered host's network namespace, so
// the sockets f makes live there (they stay there when used elsewhere).
// The thread goes back to its own namespace after f; if it cannot, it stays
// locked and ends with its goroutine.
func inNetns(r *Rig, host string, f func() error) error {
	pid, err := r.AnchorPID(host)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("own netns: %w", err)
			return
		}
		defer unix.Close(own)
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/net", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns of %s: %w", host, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", host, err)
			return
		}
		ferr := f()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// connectRTT connects from host to addr (an sshd) five times and returns
// the shortest connect time and the kernel's RTT estimate (TCP_INFO) of
// that connection's handshake.
func connectRTT(r *Rig, host, addr string) (connect, kernel time.Duration, err error) {
	err = inNetns(r, host, func() error {
		for i := 0; i < 5; i++ {
			t0 := time.Now()
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			d := time.Since(t0)
			if err != nil {
				return err
			}
			raw, err := c.(*net.TCPConn).SyscallConn()
			if err != nil {
				c.Close()
				return err
			}
			var info *unix.TCPInfo
			var ierr error
			if err := raw.Control(func(fd uintptr) {
				info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			}); err != nil {
				ierr = err
			}
			c.Close()
			if ierr != nil {
				return fmt.Errorf("tcp_info: %w", ierr)
			}
			if i == 0 || d < connect {
				connect, kernel = d, time.Duration(info.Rtt)*time.Microsecond
			}
		}
		return nil
	})
	return connect, kernel, err
}

// TestDelayLink checks the long link of rig.sh delay: TCP between any two
// hosts sees the configured round-trip time (a link that forwarded packets
// without holding them would connect in well under a millisecond), the
// link carries no more than its rate, and undelay gives back direct links.
func TestDelayLink(t *testing.T) {
	r := Require(t)
	const rtt = 60 * time.Millisecond
	if err := r.Delay(rtt, "20mbit"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Undelay(); err != nil {
			t.Errorf("Undelay: %v", err)
		}
	})
	paths := []struct{ from, to string }{
		{Op, r.BuildAddr},
		{Op, r.PXEAddr},
		{Build, r.PXEDirectAddr},
		{PXE, "10.77.3.1"}, // build's end of the direct link
	}
	for _, p := range paths {
		connect, kernel, err := connectRTT(r, p.from, net.JoinHostPort(p.to, "22"))
		if err != nil {
			t.Errorf("connect %s -> %s: %v", p.from, p.to, err)
			continue
		}
		// The slack above covers a busy machine's scheduling; below, none:
		// a SYN cannot come back before it has crossed the link twice.
		if connect < rtt || connect > rtt+20*time.Millisecond {
			t.Errorf("connect %s -> %s = %v (shortest of 5), want %v..%v", p.from, p.to, connect, rtt, rtt+20*time.Millisecond)
		}
		if kernel < rtt || kernel > rtt+20*time.Millisecond {
			t.Errorf("tcpi_rtt %s -> %s = %v, want %v..%v", p.from, p.to, kernel, rtt, rtt+20*time.Millisecond)
		}
	}

	// The rate: 2.5 MB at 20 Mbit/s cannot arrive in less than a second
	// after the receiver has accepted (the sender's first byte leaves no
	// earlier than half a round trip before that).
	const size = 2_500_000
	min := time.Duration(size * 8 * int64(time.Second) / 20_000_000)
	var ln net.Listener
	if err := inNetns(r, PXE, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(r.PXEDirectAddr, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		d   time.Duration
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		t0 := time.Now()
		n, err := io.Copy(io.Discard, c)
		got <- result{n, time.Since(t0), err}
	}()
	if err := inNetns(r, Build, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(make([]byte, size))
		return errors.Join(err, c.(*net.TCPConn).CloseWrite())
	}); err != nil {
		t.Fatal(err)
	}
	res := <-got
	if res.err != nil || res.n != size {
		t.Fatalf("receiving on pxe: %d bytes, %v; want %d", res.n, res.err, size)
	}
	if res.d < min*95/100 {
		t.Errorf("%d bytes over a 20 Mbit/s link took %v, want at least %v", size, res.d, min)
	}

	if err := r.Undelay(); err != nil {
		t.Fatal(err)
	}
	connect, _, err := connectRTT(r, Build, net.JoinHostPort(r.PXEDirectAddr, "22"))
	if err != nil {
		t.Fatalf("after Undelay, connect build -> pxe: %v", err)
	}
	if connect >= rtt/2 {
		t.Errorf("after Undelay, connect build -> pxe = %v (shortest of 5), want under %v", connect, rtt/2)
	}
}
