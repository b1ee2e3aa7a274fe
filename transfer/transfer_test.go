package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"
	"github.com/nbship/nbship/internal/ldm"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func mkfile(t testing.TB, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, mode)
}

// pipeTrip runs Send of src at level on a and Receive into sink on c, the
// two ends of an in-memory connection (net.Pipe, or wrappers of its ends),
// and returns both ends' results once both have ended.
func pipeTrip(src *Source, sink Sink, level zstd.EncoderLevel, a, c io.ReadWriteCloser, ro ReceiveOptions) (sent, got *Stats, serr, rerr error) {
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		defer close(done)
		got, rerr = Receive(ctx, c, sink, ro)
		c.Close()
	}()
	sent, serr = Send(ctx, a, src, SendOptions{Level: level})
	a.Close()
	<-done
	return sent, got, serr, rerr
}

// roundTrip sends src's paths through Send and Receive over an in-memory
// connection into a fresh directory and returns both ends' results.
func roundTrip(t testing.TB, have func([32]byte) (string, bool), paths ...string) (dir string, sent, got *Stats, serr, rerr error) {
	t.Helper()
	src, err := Collect(context.Background(), paths)
	if err != nil {
		t.Fatalf("Collect(%v): %v", paths, err)
	}
	dir = t.TempDir()
	sink, err := NewDirSink(dir, have)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	a, c := net.Pipe()
	sent, got, serr, rerr = pipeTrip(src, sink, zstdFastest, a, c, ReceiveOptions{})
	return dir, sent, got, serr, rerr
}

var zstdFastest = zstd.SpeedFastest

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string // name -> content
	}{
		{"one empty file", map[string]string{"empty": ""}},
		{"nested", map[string]string{"a/b/c/d.txt": "deep", "a/x": "x", "top": "t"}},
		{"many small", func() map[string]string {
			m := map[string]string{}
			for i := range 300 {
				m[fmt.Sprintf("d%02d/f%03d", i%7, i)] = strings.Repeat("z", i)
			}
			return m
		}()},
		{"unicode names", map[string]string{"ünï cødé/fïlé 1": "ok", "spaces in name": "s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			for n, c := range tc.files {
				mkfile(t, filepath.Join(src, n), []byte(c), 0o644)
			}
			dir, sent, got, serr, rerr := roundTrip(t, nil, src)
			if serr != nil || rerr != nil {
				t.Fatalf("Send = %v, Receive = %v", serr, rerr)
			}
			if sent.Files != len(tc.files) || got.Files != len(tc.files) {
				t.Errorf("files sent, received = %d, %d, want %d", sent.Files, got.Files, len(tc.files))
			}
			for n, c := range tc.files {
				b, err := os.ReadFile(filepath.Join(dir, n))
				if err != nil || string(b) != c {
					t.Errorf("%s = %q, %v, want %q", n, b, err, c)
				}
			}
		})
	}
}

func TestCollectRefusesSpecialFilesAndLoops(t *testing.T) {
	src := t.TempDir()
	mkfile(t, filepath.Join(src, "d/f"), []byte("f"), 0o644)
	if err := os.Symlink("..", filepath.Join(src, "d/loop")); err != nil {
		t.Fatal(err)
	}
	if _, err := Collect(context.Background(), []string{src}); err == nil || !strings.Contains(err.Error(), "symlink loop") {
		t.Errorf("Collect(loop) = %v, want symlink loop error", err)
	}
	if _, err := Collect(context.Background(), []string{"/dev/null"}); err == nil || !strings.Contains(err.Error(), "device file") {
		t.Errorf("Collect(/dev/null) = %v, want a device file error", err)
	}
	a, b := t.TempDir(), t.TempDir()
	mkfile(t, filepath.Join(a, "same"), []byte("1"), 0o644)
	mkfile(t, filepath.Join(b, "same"), []byte("2"), 0o644)
	if _, err := Collect(context.Background(), []string{a, b}); err == nil || !strings.Contains(err.Error(), `both provide "same"`) {
		t.Errorf("Collect(two dirs with one name) = %v, want a duplicate error", err)
	}
}

func TestReusedFilesAreNotSent(t *testing.T) {
	src := t.TempDir()
	kernel := bytes.Repeat([]byte("kernel"), 100000)
	mkfile(t, filepath.Join(src, "Image"), kernel, 0o444)
	mkfile(t, filepath.Join(src, "netboot.ipxe"), []byte("#!ipxe\nnew\n"), 0o444)
	old := filepath.Join(t.TempDir(), "Image")
	mkfile(t, old, kernel, 0o444)
	want := sha256.Sum256(kernel)
	have := func(sum [32]byte) (string, bool) {
		if sum == want {
			return old, true
		}
		return "", false
	}
	dir, sent, got, serr, rerr := roundTrip(t, have, src)
	if serr != nil || rerr != nil {
		t.Fatalf("Send = %v, Receive = %v", serr, rerr)
	}
	if sent.Sent != 1 || sent.Reused != 1 || got.Reused != 1 {
		t.Errorf("sent, reused = %d, %d (receiver %d), want 1, 1", sent.Sent, sent.Reused, got.Reused)
	}
	if sent.Bytes != int64(len("#!ipxe\nnew\n")) {
		t.Errorf("bytes sent = %d, want only the ipxe file's", sent.Bytes)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "Image"))
	if !bytes.Equal(b, kernel) {
		t.Errorf("reused Image differs")
	}
}

// rawStream builds what a (possibly hostile) sender writes: the preface,
// a header and the data, zstd-compressed in data messages (through
// internal/ldm when the header says "long").
func rawStream(version uint16, header string, data []byte, extra ...[]byte) []byte {
	if data != nil && strings.Contains(header, `"long":true`) {
		var b bytes.Buffer
		ldm.NewEncoder().Encode(&b, data, true)
		data = b.Bytes()
	}
	return payloadStream(version, header, data, extra...)
}

// payloadStream is rawStream with the payload compressed as it is.
func payloadStream(version uint16, header string, payload []byte, extra ...[]byte) []byte {
	var b bytes.Buffer
	b.WriteString(magic)
	binary.Write(&b, binary.BigEndian, version)
	writeMsg(&b, msgHeader, []byte(header))
	if payload != nil {
		var z bytes.Buffer
		enc, _ := zstd.NewWriter(&z, zstd.WithEncoderLevel(zstd.SpeedFastest))
		enc.Write(payload)
		enc.Close()
		for zb := z.Bytes(); len(zb) > 0; {
			n := min(len(zb), sendChunk)
			writeMsg(&b, msgData, zb[:n])
			zb = zb[n:]
		}
		writeMsg(&b, msgEnd, nil)
	}
	for _, e := range extra {
		b.Write(e)
	}
	return b.Bytes()
}

func manifest(total int64, entries ...string) string {
	return fmt.Sprintf(`{"version":%d,"total":%d,"entries":[%s]}`, Version, total, strings.Join(entries, ","))
}

// storeManifest is manifest for a closure's NARs, which go through ldm.
func storeManifest(total int64, entries ...string) string {
	return fmt.Sprintf(`{"version":%d,"total":%d,"entries":[%s],"long":true}`, Version, total, strings.Join(entries, ","))
}

func file(name string, data []byte) string {
	n, _ := json.Marshal(name)
	return fmt.Sprintf(`{"name":%s,"type":"file","mode":420,"size":%d,"sha256":%q}`, n, len(data), sha(data))
}

// scripted is a connection whose reads replay a recorded sender and whose
// writes (the receiver's messages) are counted and dropped.
type scripted struct {
	r       io.Reader
	written int
}

func (s *scripted) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { s.written += len(p); return len(p), nil }

var hostile = []struct {
	name   string
	stream []byte
	want   string
}{
	{"absolute name", rawStream(Version, manifest(1, file("/etc/passwd", []byte("x"))), []byte("x")), "absolute name"},
	{"dot dot", rawStream(Version, manifest(1, file("a/../../x", []byte("x"))), []byte("x")), "'..'"},
	{"bare dot dot", rawStream(Version, manifest(1, file("..", []byte("x"))), []byte("x")), "'..'"},
	{"NUL in name", rawStream(Version, manifest(1, file("a\x00b", []byte("x"))), []byte("x")), "NUL"},
	{"newline in name", rawStream(Version, manifest(1, file("a\nb", []byte("x"))), []byte("x")), "newline"},
	{"duplicate", rawStream(Version, manifest(2, file("a", []byte("x")), file("a", []byte("y"))), []byte("xy")), "duplicate name"},
	{"parent is a file", rawStream(Version, manifest(2, file("a", []byte("x")), file("a/b", []byte("y"))), []byte("xy")), "parent directory is not declared"},
	{"undeclared parent", rawStream(Version, manifest(1, file("d/b", []byte("y"))), []byte("y")), "parent directory is not declared"},
	{"device file", rawStream(Version, manifest(0, `{"name":"sda","type":"dev","mode":420}`), nil), `type "dev" is not file or dir`},
	{"device mode bits", rawStream(Version, manifest(1, `{"name":"sda","type":"file","mode":67109284,"size":1,"sha256":"`+sha([]byte("x"))+`"}`), []byte("x")), "not plain permission bits"},
	{"symlink type", rawStream(Version, manifest(0, `{"name":"l","type":"symlink","mode":511}`), nil), `type "symlink"`},
	{"setuid", rawStream(Version, manifest(1, `{"name":"s","type":"file","mode":8389101,"size":1,"sha256":"`+sha([]byte("x"))+`"}`), []byte("x")), "not plain permission bits"},
	{"more bytes than announced", rawStream(Version, manifest(1, file("a", []byte("x"))), []byte("xEXTRA")), "more data than"},
	{"sizes exceed total", rawStream(Version, manifest(1, file("a", []byte("xy"))), []byte("xy")), "more than the announced total"},
	{"total not matched", rawStream(Version, manifest(5, file("a", []byte("xy"))), []byte("xy")), "not the announced 5"},
	{"hash mismatch", rawStream(Version, manifest(1, `{"name":"a","type":"file","mode":420,"size":1,"sha256":"`+sha([]byte("y"))+`"}`), []byte("x")), "does not match the announced"},
	{"truncated data", rawStream(Version, manifest(10, file("a", []byte("0123456789"))), nil, func() []byte {
		var b bytes.Buffer
		var z bytes.Buffer
		enc, _ := zstd.NewWriter(&z)
		enc.Write([]byte("01234"))
		enc.Close()
		writeMsg(&b, msgData, z.Bytes())
		return b.Bytes()
	}()), "truncated"},
	{"zstd ends early", rawStream(Version, manifest(10, file("a", []byte("0123456789"))), []byte("01234")), "truncated stream"},
	{"truncated header", append([]byte(magic+"\x00"+string(rune(Version))), 'H', 0, 0, 1, 0, '{'), "truncated"},
	{"unknown version", rawStream(7, manifest(0), nil), "version 7 is not supported"},
	{"not nbship", []byte("GET / HTTP/1.1\r\n\r\n"), "nbship magic"},
	{"huge header", append([]byte(magic+"\x00"+string(rune(Version))), 'H', 0xff, 0xff, 0xff, 0xff), "larger than the limit"},
	{"bad json", rawStream(Version, `{"version":`+fmt.Sprint(Version)+`,"entries":[`, nil), "not a valid manifest"},
	{"unknown field", rawStream(Version, `{"version":`+fmt.Sprint(Version)+`,"total":0,"entries":[],"evil":1}`, nil), "unknown field"},
	{"negative size", rawStream(Version, `{"version":`+fmt.Sprint(Version)+`,"total":-1,"entries":[]}`, nil), "out of range"},
	{"compression bomb", rawStream(Version, manifest(10, file("a", bytes.Repeat([]byte{0}, 10))), bytes.Repeat([]byte{0}, 64<<20)), "more data than"},
	{"data message too big", rawStream(Version, manifest(1, file("a", []byte("x"))), nil, []byte{'D', 0x7f, 0, 0, 0}), "larger than the limit"},
	{"sender abort", rawStream(Version, manifest(1, file("a", []byte("x"))), nil, func() []byte {
		var b bytes.Buffer
		writeMsg(&b, msgAbort, []byte("disk on fire"))
		return b.Bytes()
	}()), "disk on fire"},
}

func TestReceiveRefusesHostileStreams(t *testing.T) {
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sink, err := NewDirSink(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			conn := &scripted{r: bytes.NewReader(tc.stream)}
			_, err = Receive(context.Background(), conn, sink, ReceiveOptions{Commit: func() (string, error) {
				t.Error("Commit called for a refused stream")
				return "", nil
			}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Receive(%s) = %v, want error containing %q", tc.name, err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
			// A cut connection or the sender's own abort is no refusal:
			// another attempt may succeed. Everything else is.
			var pe *PeerError
			if final := !errors.Is(err, ErrTruncated) && !errors.As(err, &pe); final != IsRefusal(err) {
				t.Errorf("Receive(%s) = %v: IsRefusal = %v, want %v", tc.name, err, !final, final)
			}
			var me *ManifestError
			if errors.As(err, &me) {
				// Refused from the header alone: not a byte written.
				if ents, _ := os.ReadDir(dir); len(ents) != 0 {
					t.Errorf("manifest refused but %d entries written", len(ents))
				}
			}
		})
	}
}

// memSink keeps nothing but checks that the receiver never writes more than
// it announced, and only under valid names.
type memSink struct {
	t       *testing.T
	written int64
	limit   int64
}

func (m *memSink) Want(e *Entry) bool { return true }
func (m *memSink) Mkdir(e *Entry) error {
	if CheckName(e.Name) != nil {
		m.t.Fatalf("Mkdir(%q) of an invalid name", e.Name)
	}
	return nil
}
func (m *memSink) Create(e *Entry) (io.WriteCloser, error) {
	if CheckName(e.Name) != nil {
		m.t.Fatalf("Create(%q) of an invalid name", e.Name)
	}
	m.limit += e.Size
	return m, nil
}
func (m *memSink) Write(p []byte) (int, error) {
	m.written += int64(len(p))
	if m.written > m.limit {
		m.t.Fatalf("receiver wrote %d bytes, more than the %d announced", m.written, m.limit)
	}
	return len(p), nil
}
func (m *memSink) Close() error         { return nil }
func (m *memSink) Reuse(e *Entry) error { return nil }
func (m *memSink) Finish() error        { return nil }

func FuzzReceive(f *testing.F) {
	for _, tc := range hostile {
		f.Add(tc.stream)
	}
	f.Add(rawStream(Version, manifest(3, file("d", []byte("abc"))), []byte("abc")))
	f.Add(rawStream(Version, manifest(3, `{"name":"d","type":"dir","mode":493}`, file("d/f", []byte("abc"))), []byte("abc")))
	// Store paths, which a file sink refuses.
	f.Add(narStream([]string{narEntry(leafName, leafNAR, nil, "")}, leafNAR))
	f.Fuzz(func(t *testing.T, stream []byte) {
		sink := &memSink{t: t}
		st, err := Receive(context.Background(), &scripted{r: bytes.NewReader(stream)}, sink, ReceiveOptions{})
		if err == nil && st.Bytes != sink.written {
			t.Fatalf("accepted stream: stats say %d bytes, sink got %d", st.Bytes, sink.written)
		}
	})
}

func TestSenderSeesReceiverRefusal(t *testing.T) {
	src := t.TempDir()
	mkfile(t, filepath.Join(src, "f"), []byte("data"), 0o644)
	dir := t.TempDir()
	mkfile(t, filepath.Join(dir, "junk"), []byte("x"), 0o644)
	// A sink that fails at the end stands for a receiver whose commit fails.
	ctx := context.Background()
	s, err := Collect(ctx, []string{src})
	if err != nil {
		t.Fatal(err)
	}
	sink, err := NewDirSink(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a, c := net.Pipe()
	_, _, err, _ = pipeTrip(s, sink, zstd.SpeedDefault, a, c, ReceiveOptions{Commit: func() (string, error) { return "", errors.New("pxeDir is full") }})
	var pe *PeerError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "pxeDir is full") {
		t.Errorf("Send = %v, want the receiver's reason", err)
	}
}

func BenchmarkSendReceive(b *testing.B) {
	for _, bc := range []struct {
		name string
		data func() []byte
	}{
		{"incompressible-64MiB", func() []byte { d := make([]byte, 64<<20); randRead(d); return d }},
		{"text-64MiB", func() []byte {
			return bytes.Repeat([]byte("a netboot initrd line, fairly compressible 0123456789\n"), (64<<20)/54)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			src := b.TempDir()
			data := bc.data()
			mkfile(b, filepath.Join(src, "f"), data, 0o644)
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_, _, _, serr, rerr := roundTrip(b, nil, src)
				if serr != nil || rerr != nil {
					b.Fatal(serr, rerr)
				}
			}
		})
	}
}

func randRead(p []byte) {
	// Not crypto: the benchmark needs bytes zstd cannot shrink, quickly.
	var x uint64 = 0x9E3779B97F4A7C15
	for i := 0; i+8 <= len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
}

// A file written to between Collect and Send: the sender names it, the
// receiver refuses its bytes (they no longer match the announced SHA-256).
func TestSendRefusesFileChangedAfterCollect(t *testing.T) {
	src := t.TempDir()
	mkfile(t, filepath.Join(src, "a"), bytes.Repeat([]byte("a"), 1<<20), 0o644)
	mkfile(t, filepath.Join(src, "b"), []byte("stays"), 0o644)
	ctx := context.Background()
	s, err := Collect(ctx, []string{src})
	if err != nil {
		t.Fatal(err)
	}
	// Same size, other bytes.
	mkfile(t, filepath.Join(src, "a"), bytes.Repeat([]byte("b"), 1<<20), 0o644)
	sink, err := NewDirSink(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	a, c := net.Pipe()
	_, _, serr, rerr := pipeTrip(s, sink, zstdFastest, a, c, ReceiveOptions{})
	if serr == nil || !strings.Contains(serr.Error(), filepath.Join(src, "a")) || !strings.Contains(serr.Error(), "changed") {
		t.Errorf("Send = %v, want an error naming %s as changed", serr, filepath.Join(src, "a"))
	}
	if rerr == nil {
		t.Error("Receive accepted a file whose bytes are not the announced ones")
	}
}

// A big file is synced in the background as it is written (so that the
// syncfs before publishing has little left to wait for), and arrives whole.
func TestDirSinkSyncsBigFilesAsTheyArrive(t *testing.T) {
	src := t.TempDir()
	data := make([]byte, 5*syncEvery/2+12345)
	for i := range data {
		data[i] = byte(i * 7 / 5)
	}
	if err := os.WriteFile(filepath.Join(src, "initrd"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, sink := shipInto(t, filepath.Join(src, "initrd"), zstdFastest, func(c io.ReadWriteCloser) io.ReadWriteCloser { return c })
	// 2.5 times syncEvery: the first sync at 8 MiB always starts; the
	// second at 16 MiB only if the first is done by then.
	if n := sink.synced.Load(); n < 1 || n > 2 {
		t.Fatalf("%d background syncs for a file of %d bytes; want 1 or 2", n, len(data))
	}
}

// A link that fails mid-stream is not a refusal of what was sent: a retry
// may get through. Its error passes the decoders as the link's.
func TestReceiveLinkErrorIsNotARefusal(t *testing.T) {
	data := bytes.Repeat([]byte("kernel bytes "), 100000)
	stream := rawStream(Version, manifest(int64(len(data)), file("Image", data)), data)
	reset := errors.New("read tcp: connection reset by peer")
	for _, cut := range []int{len(stream) / 2, len(stream) - 10} {
		sink, err := NewDirSink(t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		conn := &scripted{r: io.MultiReader(bytes.NewReader(stream[:cut]), iotest.ErrReader(reset))}
		_, err = Receive(context.Background(), conn, sink, ReceiveOptions{})
		sink.Close()
		if !errors.Is(err, reset) || IsRefusal(err) {
			t.Errorf("Receive cut at %d = %v (refusal %v), want the link's error, not a refusal", cut, err, IsRefusal(err))
		}
	}
}
