package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/testbin"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// wrongPin runs recv and sender on loopback and gives one of them (liar) a
// pin that is not its peer's; the other gets the right one.
func wrongPin(t *testing.T, liar string) (r, s *proc, rpin, spin, wrong string) {
	t.Helper()
	bin := nbshipBinary(t, "amd64")
	src := oneFileDir(t, "Image", []byte("kernel"))
	parent := t.TempDir()
	r = start(t, bin, "recv", "--listen", "127.0.0.1:0", "--dest", filepath.Join(parent, "out"), "--peer-pin", "-", "--accept-timeout", "3s")
	rfp := r.line(t)
	addr, _ := strings.CutPrefix(r.line(t), "listening ")
	s = start(t, bin, "send", "--connect", addr, "--peer-pin", "-", src)
	sfp := s.line(t)
	wrong = tunnel.Fingerprint([]byte("some other certificate"))
	toRecv, toSender := sfp, rfp
	if liar == "recv" {
		toRecv = "fingerprint " + wrong
	} else {
		toSender = "fingerprint " + wrong
	}
	r.stdin.Write([]byte(toRecv + "\n"))
	s.stdin.Write([]byte(toSender + "\n"))
	_, serr := s.wait(t)
	_, rerr := r.wait(t)
	if serr == nil || rerr == nil {
		t.Fatalf("sender exit %v, recv exit %v; want both to fail", serr, rerr)
	}
	assertNoLeftovers(t, parent)
	return r, s, strings.TrimPrefix(rfp, "fingerprint "), strings.TrimPrefix(sfp, "fingerprint "), wrong
}

func TestWrongPinRefusedBySender(t *testing.T) {
	r, s, rpin, _, wrong := wrongPin(t, "send")
	if msg := s.stderr.String(); !strings.Contains(msg, "fingerprint mismatch") || !strings.Contains(msg, wrong) || !strings.Contains(msg, rpin) {
		t.Errorf("sender stderr %q: want fingerprint mismatch naming %s and %s", msg, wrong, rpin)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 77 {
		t.Errorf("sender exit = %d, want 77 (a pin mismatch: not to be retried)", code)
	}
	if msg := r.stderr.String(); !strings.Contains(msg, "refused") {
		t.Errorf("recv stderr %q: want it to report the refused peer", msg)
	}
}

func TestWrongPinRefusedByRecv(t *testing.T) {
	r, s, _, spin, wrong := wrongPin(t, "recv")
	if msg := r.stderr.String(); !strings.Contains(msg, "fingerprint mismatch") || !strings.Contains(msg, wrong) || !strings.Contains(msg, spin) {
		t.Errorf("recv stderr %q: want fingerprint mismatch naming %s and %s", msg, wrong, spin)
	}
	if msg := s.stderr.String(); !strings.Contains(msg, "refused our certificate") {
		t.Errorf("sender stderr %q: want it to say its certificate was refused", msg)
	}
}

// hostileSend connects to a real recv over the pinned channel and writes a
// crafted stream, as a modified sender would.
func hostileSend(t *testing.T, stream []byte) (recvStderr string, recvErr error, dest string) {
	stderr, err, dest, _ := hostileSendRSS(t, stream)
	return stderr, err, dest
}

// hostileSendRSS is hostileSend that also returns the receiver's peak
// resident memory in KiB.
func hostileSendRSS(t *testing.T, stream []byte) (recvStderr string, recvErr error, dest string, maxRSS int64) {
	t.Helper()
	bin := nbshipBinary(t, "amd64")
	parent := t.TempDir()
	dest = filepath.Join(parent, "out")
	id, err := tunnel.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	// Under /usr/bin/time, whose own fork gives the receiver a memory
	// high-water mark of its own (the test process's would be inherited
	// through Go's vfork-style exec).
	rssFile := filepath.Join(t.TempDir(), "rss")
	r := start(t, "/usr/bin/time", "-f", "%M", "-o", rssFile, bin, "recv", "--listen", "127.0.0.1:0", "--dest", dest, "--peer-pin", id.Pin(), "--accept-timeout", "10s")
	rpin := strings.TrimPrefix(r.line(t), "fingerprint ")
	addr, _ := strings.CutPrefix(r.line(t), "listening ")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := tunnel.DialLanes(ctx, addr, id, rpin, tunnel.LaneOptions{})
	if err != nil {
		t.Fatalf("dialing recv: %v", err)
	}
	go io.Copy(io.Discard, c) // the receiver's messages
	c.Write(stream)
	c.CloseWrite()
	_, rerr := r.wait(t)
	c.Close()
	assertNoLeftovers(t, parent)
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatalf("reading the receiver's peak memory: %v", err)
	}
	// The last line; time(1) puts "Command exited with ..." before it.
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		t.Fatalf("no peak memory from time(1)")
	}
	maxRSS, err = strconv.ParseInt(fields[len(fields)-1], 10, 64)
	if err != nil {
		t.Fatalf("peak memory %q: %v", b, err)
	}
	return r.stderr.String(), rerr, dest, maxRSS
}

func frame(t byte, p []byte) []byte {
	var h [5]byte
	h[0] = t
	binary.BigEndian.PutUint32(h[1:], uint32(len(p)))
	return append(h[:], p...)
}

func crafted(version uint16, header string, data []byte) []byte {
	var b bytes.Buffer
	b.WriteString("NBSHIP\x00")
	binary.Write(&b, binary.BigEndian, version)
	b.Write(frame('H', []byte(header)))
	if data != nil {
		var z bytes.Buffer
		enc, _ := zstd.NewWriter(&z, zstd.WithEncoderLevel(zstd.SpeedFastest))
		enc.Write(data)
		enc.Close()
		for zb := z.Bytes(); len(zb) > 0; {
			n := min(len(zb), 1<<20)
			b.Write(frame('D', zb[:n]))
			zb = zb[n:]
		}
		b.Write(frame('E', nil))
	}
	return b.Bytes()
}

func entry(name string, data []byte) string {
	s := sha256.Sum256(data)
	return fmt.Sprintf(`{"name":%q,"type":"file","mode":420,"size":%d,"sha256":%q}`, name, len(data), hex.EncodeToString(s[:]))
}

func TestRecvRefusesHostileSender(t *testing.T) {
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string
	}{
		{"traversal", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":1,"entries":[`+entry("../escape", []byte("x"))+`]}`, []byte("x")), "'..'"},
		{"absolute", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":1,"entries":[`+entry("/etc/cron.d/x", []byte("x"))+`]}`, []byte("x")), "absolute name"},
		{"device", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":0,"entries":[{"name":"null","type":"dev","mode":438}]}`, nil), `type "dev"`},
		{"oversize entry", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":1,"entries":[`+entry("a", []byte("x"))+`]}`, []byte("x and a lot more")), "more data than"},
		{"compression bomb", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":4,"entries":[`+entry("a", []byte{0, 0, 0, 0})+`]}`, make([]byte, 256<<20)), "more data than"},
		{"unknown version", crafted(9, `{}`, nil), "version 9 is not supported"},
		{"truncated", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":5,"entries":[`+entry("a", []byte("12345"))+`]}`, nil), "truncated"},
		{"huge header", append([]byte("NBSHIP\x00\x00"+string(rune(transfer.Version))), 'H', 0x7f, 0xff, 0xff, 0xff), "larger than the limit"},
		{"bad hash", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":1,"entries":[`+entry("a", []byte("y"))+`]}`, []byte("x")), "does not match"},
		{"a million directories", crafted(transfer.Version, manyDirs(1_000_000, 8), nil), "larger than the limit"},
		{"entries past the limit", crafted(transfer.Version, manyDirs(transfer.MaxEntries+1, 200), nil), "more than the limit of 65536 entries"},
		{"short data", crafted(transfer.Version, `{"version":`+fmt.Sprint(transfer.Version)+`,"total":5,"entries":[`+entry("a", []byte("12345"))+`]}`, []byte("123")), "data ended after 3 of its 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stderr, err, dest, rss := hostileSendRSS(t, tc.stream)
			if err == nil {
				t.Fatalf("recv accepted a %s stream", tc.name)
			}
			t.Logf("recv peak RSS %d KiB", rss)
			// Refused within bounded memory: no stream makes the
			// receiver hold what it announces or decompresses.
			if rss > 64<<10 || rss == 0 {
				t.Errorf("recv peaked at %d KiB of memory on a %s stream, want under 64 MiB", rss, tc.name)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("recv stderr = %q, want it to contain %q", stderr, tc.want)
			}
			if _, err := os.Stat(dest); !os.IsNotExist(err) {
				t.Errorf("dest exists after a refused stream: %v", err)
			}
			// A refusal exits 65, which the controller never retries; a
			// stream cut short is the link's fault, and may be.
			want := protocol.ExitRefused
			if tc.name == "truncated" {
				want = 1
			}
			if code := exitCode(err); code != want {
				t.Errorf("recv exit status = %d on a %s stream, want %d", code, tc.name, want)
			}
		})
	}
}

// exitCode is a finished command's exit status (-1 if it did not exit).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

func TestRecvRefusesNonEmptyDestUnlessReplace(t *testing.T) {
	src := oneFileDir(t, "Image", []byte("new kernel"))
	dest := filepath.Join(t.TempDir(), "slot")
	writeFile(t, filepath.Join(dest, "Image"), []byte("old kernel"), 0o644)
	writeFile(t, filepath.Join(dest, "stale"), []byte("old"), 0o644)

	bin := nbshipBinary(t, "amd64")
	var out bytes.Buffer
	cmd := start(t, bin, "recv", "--listen", "127.0.0.1:0", "--dest", dest, "--peer-pin", "-")
	_, err := cmd.wait(t)
	out.WriteString(cmd.stderr.String())
	if err == nil || !strings.Contains(out.String(), "is not empty") || !strings.Contains(out.String(), "--replace") {
		t.Fatalf("recv into a non-empty dest: %v %q, want refusal with a --replace hint", err, out.String())
	}

	recv, sender := loopback(t, dest, []string{"--replace"}, nil, src)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "Image")); string(b) != "new kernel" {
		t.Errorf("Image after --replace = %q", b)
	}
	if _, err := os.Stat(filepath.Join(dest, "stale")); !os.IsNotExist(err) {
		t.Errorf("stale file survived the replace")
	}
	assertNoLeftovers(t, filepath.Dir(dest), "slot")
}

// sendToWatched starts bin's sender of path towards a listener that only
// notes whether it is dialled, and gives the sender a receiver's pin. It
// returns the sender and that note, to read once the sender has ended.
func sendToWatched(t *testing.T, bin, path string) (s *proc, dialled func() bool) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			ch <- struct{}{}
			c.Close()
		}
	}()
	s, _ = startSender(t, bin, ln.Addr().String(), path)
	s.stdin.Write([]byte("fingerprint " + tunnel.Fingerprint([]byte("the receiver")) + "\n"))
	return s, func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
}

// The sender hashes its files while the pins are exchanged; a path that is
// not there still fails before it dials, with one line naming the path,
// and the receiver never sees a connection.
func TestSendMissingPathFailsBeforeDialling(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	missing := filepath.Join(t.TempDir(), "no-such-Image")
	s, dialled := sendToWatched(t, bin, missing)
	if _, err := s.wait(t); err == nil {
		t.Fatal("sender of a missing path exited 0")
	}
	msg := strings.TrimSpace(s.stderr.String())
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, missing) {
		t.Errorf("sender stderr %q: want one line naming %s", msg, missing)
	}
	if dialled() {
		t.Error("the sender dialled the receiver although it had nothing to send")
	}
}

// A receiver that refuses what it was sent (here: an x86 kernel for an arm
// slot) exits 65, and so does the sender it tells: the controller sees a
// refusal from either end and never sends it again.
func TestRefusedImageExitsRefusedOnBothEnds(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src := t.TempDir()
	kernel, err := os.ReadFile("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux")
	if err != nil {
		testbin.Missing(t, "Debian's amd64 netboot kernel: %v (install debian-installer-12-netboot-amd64)", err)
	}
	writeFile(t, filepath.Join(src, "Image"), kernel, 0o644)
	writeFile(t, filepath.Join(src, "initrd"), []byte("not an initrd either"), 0o644)
	writeFile(t, filepath.Join(src, "netboot.ipxe"), []byte("#!ipxe\nkernel Image initrd=initrd\ninitrd initrd\nboot\n"), 0o644)
	pxe := t.TempDir()
	r, rfp, addr := startRecv(t, bin, "--publish", pxe, "--instance", "c2.large.arm", "--accept-timeout", "20s")
	s, sfp := startSender(t, bin, addr, src)
	r.stdin.Write([]byte(sfp + "\n"))
	s.stdin.Write([]byte(rfp + "\n"))
	_, serr := s.wait(t)
	_, rerr := r.wait(t)
	if exitCode(rerr) != protocol.ExitRefused || exitCode(serr) != protocol.ExitRefused {
		t.Fatalf("recv exit %d (%s), sender exit %d (%s); want %d from both", exitCode(rerr), r.stderr, exitCode(serr), s.stderr, protocol.ExitRefused)
	}
	if !strings.Contains(s.stderr.String(), "the receiver refused the stream: ") {
		t.Errorf("sender stderr = %q, want it to say the receiver refused", s.stderr)
	}
	for _, out := range []string{r.stderr.String(), s.stderr.String()} {
		for _, twice := range []string{"recv: recv:", "send: send:", "transfer: transfer:", "image: image:"} {
			if strings.Contains(out, twice) {
				t.Errorf("a prefix is said twice (%q): %q", twice, out)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(pxe, "hydra-c2.large.arm")); !os.IsNotExist(err) {
		t.Errorf("the slot exists after a refused image: %v", err)
	}
}

// manyDirs is a manifest of n directories with names of about size bytes:
// as large a header as a sender can make.
func manyDirs(n, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"version":%d,"total":0,"entries":[`, transfer.Version)
	pad := strings.Repeat("d", max(1, size-8))
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"%s%07d","type":"dir","mode":493}`, pad, i)
	}
	b.WriteString("]}")
	return b.String()
}

// An image directory holding a symlink out of it (leak -> a secret
// elsewhere) is refused by the sender before it dials, with one line naming
// the link and its target, a hint and the refusal's exit status; with
// --follow-any-symlink the file it points to is sent.
func TestSendRefusesSymlinkOutOfTheTree(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	src, secretDir := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(src, "Image"), []byte("kernel"), 0o644)
	secret := filepath.Join(secretDir, "secret")
	writeFile(t, secret, []byte("secret"), 0o600)
	leak := filepath.Join(src, "leak")
	if err := os.Symlink(secret, leak); err != nil {
		t.Fatal(err)
	}
	s, dialled := sendToWatched(t, bin, src)
	s.wait(t)
	if code := s.cmd.ProcessState.ExitCode(); code != 65 {
		t.Errorf("sender exit = %d, want 65 (refused: sending again would not help)", code)
	}
	lines := strings.Split(strings.TrimSpace(s.stderr.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], leak) || !strings.Contains(lines[0], "-> "+secret) ||
		!strings.HasPrefix(lines[1], "nbship: hint: ") || !strings.Contains(lines[1], "--follow-any-symlink") {
		t.Errorf("sender stderr = %q, want one line naming %s and %s, and a hint naming --follow-any-symlink", lines, leak, secret)
	}
	if dialled() {
		t.Error("the sender dialled the receiver although it refused what it was to send")
	}

	dest := filepath.Join(t.TempDir(), "out")
	recv, sender := loopback(t, dest, nil, []string{"--follow-any-symlink"}, src)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("with --follow-any-symlink: recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "leak")); err != nil || string(b) != "secret" {
		t.Errorf("dest/leak with --follow-any-symlink = %q, %v; want the file it pointed to", b, err)
	}
}
