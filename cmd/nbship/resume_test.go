package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/testbin"
)

// cutProxy forwards one connection to target until cut is called, then
// closes both sides without a word, as a dropped link ends a stream.
func cutProxy(t *testing.T, target string) (addr string, cut func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			return
		}
		mu.Lock()
		conns = append(conns, c, u)
		mu.Unlock()
		go io.Copy(c, u)
		io.Copy(u, c)
	}()
	return ln.Addr().String(), func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
}

// An image slot's receiver with --keep-partial keeps the start of the file
// a dropped link cut off; the next receiver continues it and the sender
// sends only the rest.
func TestRecvKeepPartialContinuesACutFile(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	deb := "/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/"
	kernel, err := os.ReadFile(deb + "linux")
	if err != nil {
		testbin.Missing(t, "Debian's arm64 netboot kernel: %v (install debian-installer-12-netboot-arm64)", err)
	}
	initrd, err := os.ReadFile(deb + "initrd.gz")
	if err != nil {
		testbin.Missing(t, "Debian's arm64 netboot initrd: %v (install debian-installer-12-netboot-arm64)", err)
	}
	initrd = append(initrd, randomBytes(t, 64<<20)...)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Image"), kernel, 0o644)
	writeFile(t, filepath.Join(src, "initrd"), initrd, 0o644)
	writeFile(t, filepath.Join(src, "netboot.ipxe"), []byte("#!ipxe\nkernel Image initrd=initrd\ninitrd initrd\nboot\n"), 0o644)
	pxe := t.TempDir()
	gens := filepath.Join(pxe, ".nbship", "generations", "c2.large.arm")

	attempt := func(keep bool, cutAt int64) (sender, recv protocol.Stream, serr, rerr error) {
		args := []string{"recv", "--listen", "127.0.0.1:0", "--pxe-dir", pxe, "--instance", "c2.large.arm", "--peer-pin", "-", "--accept-timeout", "20s", "--json"}
		if keep {
			args = append(args, "--keep-partial")
		}
		r := start(t, bin, args...)
		rfp := r.line(t)
		addr, _ := strings.CutPrefix(r.line(t), "listening ")
		cut := func() {}
		if cutAt > 0 {
			addr, cut = cutProxy(t, addr)
		}
		s := start(t, bin, "send", "--connect", addr, "--peer-pin", "-", "--json", src)
		sfp := s.line(t)
		r.stdin.Write([]byte(sfp + "\n"))
		s.stdin.Write([]byte(rfp + "\n"))
		if cutAt > 0 {
			waitStaged(t, gens, "initrd", cutAt)
			cut()
		}
		sout, serr := s.wait(t)
		rout, rerr := r.wait(t)
		if err := json.Unmarshal(lastJSON(sout), &sender); err != nil && cutAt == 0 {
			t.Errorf("send --json: %v: %q", err, sout)
		}
		if err := json.Unmarshal(lastJSON(rout), &recv); err != nil && cutAt == 0 {
			t.Errorf("recv --json: %v: %q", err, rout)
		}
		return sender, recv, serr, rerr
	}

	if _, _, serr, rerr := attempt(true, int64(len(initrd))*3/4); serr == nil || rerr == nil {
		t.Fatalf("a cut link: sender %v, recv %v; want both to fail", serr, rerr)
	}
	sender, recv, serr, rerr := attempt(false, 0)
	if serr != nil || rerr != nil {
		t.Fatalf("the retry: sender %v, recv %v", serr, rerr)
	}
	// Image was verified by the first attempt and reused; of initrd only
	// what the first attempt did not bring crossed.
	for _, st := range []protocol.Stream{sender, recv} {
		if st.Resumed < int64(len(initrd))/2 || st.Bytes > int64(len(initrd))/2 {
			t.Errorf("retry summary: %d bytes sent, %d resumed; want most of initrd's %d resumed", st.Bytes, st.Resumed, len(initrd))
		}
	}
	got, err := os.ReadFile(filepath.Join(pxe, "hydra-c2.large.arm", "initrd"))
	if err != nil || !bytes.Equal(got, initrd) {
		t.Fatalf("published initrd: %d bytes (%v), want the %d sent", len(got), err, len(initrd))
	}
	if left, _ := filepath.Glob(filepath.Join(gens, ".staging-*")); len(left) != 0 {
		t.Errorf("staging left after the publish: %v", left)
	}
}

// waitStaged waits until a staging directory under gens holds name with
// at least n bytes.
func waitStaged(t *testing.T, gens, name string, n int64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		m, _ := filepath.Glob(filepath.Join(gens, ".staging-*", name))
		for _, p := range m {
			if fi, err := os.Stat(p); err == nil && fi.Size() >= n {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%s never reached %d bytes in %s", name, n, gens)
}

// lastJSON is the last line of out that is a JSON object (the --json
// summary after any status lines).
func lastJSON(out string) []byte {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return []byte(lines[i])
		}
	}
	return nil
}

// recv --store with --keep-partial keeps, under its TMPDIR, the start of
// the NAR a dropped link cut off; the next receiver continues it from
// there, and the sender sends only the rest, read from its own dump.
func TestRecvStoreKeepPartialContinuesACutNAR(t *testing.T) {
	src, dst := newTestStore(t), newTestStore(t)
	const big = 48 << 20
	c := addClosure(t, src, big)
	bin := nbshipBinary(t, "amd64")
	tmp := t.TempDir()
	recvEnv := append(slices.Clone(dst.env), "TMPDIR="+tmp)

	attempt := func(keep bool, cutAt int64) (sender protocol.Stream, serr, rerr error) {
		args := []string{"recv", "--listen", "127.0.0.1:0", "--store", "--peer-pin", "-", "--json", "--stdin-lifeline", "--accept-timeout", "20s"}
		if keep {
			args = append(args, "--keep-partial")
		}
		r := startEnv(t, recvEnv, bin, args...)
		rfp := r.line(t)
		addr, _ := strings.CutPrefix(r.line(t), "listening ")
		cut := func() {}
		if cutAt > 0 {
			addr, cut = cutProxy(t, addr)
		}
		s := startEnv(t, src.env, bin, "send", "--store", "--connect", addr, "--peer-pin", "-", "--json", "--stdin-lifeline")
		sfp := s.line(t)
		r.stdin.Write([]byte(sfp + "\n"))
		s.stdin.Write([]byte(rfp + "\n" + c.top + "\n\n"))
		if cutAt > 0 {
			if !waitKept(tmp, cutAt) {
				cut()
				so, _ := s.wait(t)
				ro, _ := r.wait(t)
				t.Fatalf("no NAR kept to %d bytes under %s\nrecv: %s %s\nsend: %s %s", cutAt, tmp, ro, r.stderr, so, s.stderr)
			}
			cut()
		}
		sout, serr := s.wait(t)
		s.stdin.Close()
		_, rerr = r.wait(t)
		r.stdin.Close()
		if err := json.Unmarshal(lastJSON(sout), &sender); err != nil && cutAt == 0 {
			t.Errorf("send --json: %v: %q", err, sout)
		}
		return sender, serr, rerr
	}

	if _, serr, rerr := attempt(true, big*3/4); serr == nil || rerr == nil {
		t.Fatalf("a cut link: sender %v, recv %v; want both to fail", serr, rerr)
	}
	if dst.valid(t, c.leaf)[c.leaf] {
		t.Fatal("the cut NAR is valid on the receiver")
	}
	sender, serr, rerr := attempt(false, 0)
	if serr != nil || rerr != nil {
		t.Fatalf("the retry: sender %v, recv %v", serr, rerr)
	}
	if sender.Resumed < big/2 || sender.Bytes > big/2 {
		t.Errorf("retry summary: %d bytes sent, %d resumed; want most of the %d-byte NAR resumed", sender.Bytes, sender.Resumed, big)
	}
	sameClosure(t, src, dst, c.top)
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the last attempt left %v in TMPDIR", left)
	}
}

// waitKept waits until a receiver keeps at least n bytes of a NAR under
// tmp.
func waitKept(tmp string, n int64) bool {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		m, _ := filepath.Glob(filepath.Join(tmp, "nbship-nar-*"))
		for _, d := range m {
			if fi, err := os.Stat(filepath.Join(d, `.nbship\partial`)); err == nil && fi.Size() >= n {
				return true
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}
