package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbship/nbship/internal/protocol"
)

// pair runs recv and sender on loopback, handing each the other's pin over
// stdin as the controller does, and returns both ends' outcomes.
type outcome struct {
	stdout, stderr string
	err            error
}

func loopback(t *testing.T, dest string, recvArgs, sendArgs []string, paths ...string) (recv, sender outcome) {
	t.Helper()
	bin := nbshipBinary(t, "amd64")
	r := start(t, bin, append([]string{"recv", "--listen", "127.0.0.1:0", "--dest", dest, "--peer-pin", "-", "--json"}, recvArgs...)...)
	rfp := r.line(t)
	addr, ok := strings.CutPrefix(r.line(t), "listening ")
	if !ok || !strings.HasPrefix(rfp, "fingerprint SHA256:") {
		t.Fatalf("recv's first lines = %q, %q; want fingerprint and listening", rfp, addr)
	}
	s := start(t, bin, append(append([]string{"send", "--connect", addr, "--peer-pin", "-", "--json"}, sendArgs...), paths...)...)
	sfp := s.line(t)
	if !strings.HasPrefix(sfp, "fingerprint SHA256:") {
		t.Fatalf("sender's first line = %q", sfp)
	}
	// Each end gets the other's whole fingerprint line, as the controller sends it.
	r.stdin.Write([]byte(sfp + "\n"))
	s.stdin.Write([]byte(rfp + "\n"))
	so, serr := s.wait(t)
	ro, rerr := r.wait(t)
	return outcome{ro, r.stderr.String(), rerr}, outcome{so, s.stderr.String(), serr}
}

// oneFileDir is a new directory holding one file, name, with data (mode
// 0644).
func oneFileDir(t *testing.T, name string, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, name), data, 0o644)
	return dir
}

func writeFile(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestLoopbackTransferTree(t *testing.T) {
	src := t.TempDir()
	big := randomBytes(t, 100<<20)
	compressible := bytes.Repeat([]byte("netboot image line that compresses well\n"), 200000)
	writeFile(t, filepath.Join(src, "top.txt"), []byte("top\n"), 0o644)
	writeFile(t, filepath.Join(src, "bin/run"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	writeFile(t, filepath.Join(src, "deep/er/still/empty"), nil, 0o444)
	writeFile(t, filepath.Join(src, "data/random.bin"), big, 0o644)
	writeFile(t, filepath.Join(src, "data/text.log"), compressible, 0o600)
	elsewhere := filepath.Join(t.TempDir(), "target")
	writeFile(t, elsewhere, []byte("reached through a symlink\n"), 0o640)
	if err := os.Symlink(elsewhere, filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "out")

	// The link leads out of the tree: followed only when asked to.
	recv, sender := loopback(t, dest, nil, []string{"--follow-any-symlink"}, src)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	want := map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"top.txt":             {[]byte("top\n"), 0o644},
		"bin/run":             {[]byte("#!/bin/sh\necho hi\n"), 0o755},
		"deep/er/still/empty": {nil, 0o444},
		"data/random.bin":     {big, 0o644},
		"data/text.log":       {compressible, 0o600},
		"link":                {[]byte("reached through a symlink\n"), 0o640},
	}
	n := 0
	filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		n++
		rel, _ := filepath.Rel(dest, p)
		w, ok := want[rel]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		if fi.Mode()&os.ModeSymlink != 0 || !fi.Mode().IsRegular() {
			t.Errorf("%s is %v, want a regular file (symlinks are dereferenced)", rel, fi.Mode())
		}
		if fi.Mode().Perm() != w.mode {
			t.Errorf("%s mode = %v, want %v", rel, fi.Mode().Perm(), w.mode)
		}
		got, _ := os.ReadFile(p)
		if !bytes.Equal(got, w.data) {
			t.Errorf("%s content differs (%d bytes, want %d)", rel, len(got), len(w.data))
		}
		return nil
	})
	if n != len(want) {
		t.Errorf("received %d files, want %d", n, len(want))
	}
	var rs, ss protocol.Stream
	if err := json.Unmarshal([]byte(recv.stdout), &rs); err != nil {
		t.Fatalf("recv --json output %q: %v", recv.stdout, err)
	}
	connected, js, _ := strings.Cut(sender.stdout, "\n")
	if !strings.HasPrefix(connected, "connected 127.0.0.1:") {
		t.Errorf("sender's line after its fingerprint = %q, want connected ADDR", connected)
	}
	if err := json.Unmarshal([]byte(js), &ss); err != nil {
		t.Fatalf("send --json output %q: %v", sender.stdout, err)
	}
	var raw int64
	for _, w := range want {
		raw += int64(len(w.data))
	}
	for _, s := range []protocol.Stream{rs, ss} {
		if s.Files != len(want) || s.Bytes != raw {
			t.Errorf("summary files, bytes = %d, %d, want %d, %d", s.Files, s.Bytes, len(want), raw)
		}
		// The random 100 MB can't shrink; the text must: the wire carries
		// less than the raw bytes but at least the incompressible part.
		if s.WireBytes < int64(len(big)) || s.WireBytes >= raw {
			t.Errorf("wire_bytes = %d, want between %d and %d", s.WireBytes, len(big), raw)
		}
		if s.Seconds <= 0 || s.MBps <= 0 {
			t.Errorf("seconds, mbps = %v, %v, want > 0", s.Seconds, s.MBps)
		}
		// Each end's own peak: a Go process holding 256 KiB buffers and
		// a zstd coder is some MiB, and well under the 64 MiB target.
		if s.PeakRSS < 4<<10 || s.PeakRSS > 64<<10 {
			t.Errorf("peak_rss_kib = %d, want the end's own peak, 4-64 MiB", s.PeakRSS)
		}
	}
	// Over loopback the link is never much slower than the compressor.
	if ss.Level != "default" || rs.Level != "" {
		t.Errorf("level = %q (sender), %q (recv); want default, and none from the receiver", ss.Level, rs.Level)
	}
	assertNoLeftovers(t, filepath.Dir(dest), "out")
}

// assertNoLeftovers checks that dir holds nothing but want (no temporary
// directories of a receiver).
func assertNoLeftovers(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s holds %q, want %q", dir, got, want)
	}
}
