package transfer

// Benchmarks for what BenchmarkSendReceive leaves out: the zstd level the
// sender really uses (default, not fastest), a closure-shaped tree of
// thousands of small files (per-file costs), and each end on its own:
// encode (Collect's hashing + Send) against a replayed receiver, decode
// (Receive into a directory) from a recorded stream. Only the exported API
// is used, so the stream's internals can change under them.

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// benchTree describes a source tree to generate.
type benchTree struct {
	name  string
	files func(add func(name string, data []byte))
}

var benchTrees = []benchTree{
	// Like the netboot files: a 32 MiB kernel that compresses about 2:1 and
	// a 32 MiB initrd that is already compressed.
	{"netboot-64MiB", func(add func(string, []byte)) {
		add("Image", benchHalfText(32<<20, 1))
		add("initrd", benchRandom(32<<20, 2))
		add("netboot.ipxe", []byte("#!ipxe\nkernel Image initrd=initrd\ninitrd initrd\nboot\n"))
	}},
	// Like a closure: 2,500 files of 512 B to 52 KiB (26 KiB on average,
	// as in bench/closure.nix), three in four of them source text, in
	// directories of 50.
	{"closure-2500files", func(add func(string, []byte)) {
		x := uint64(7)
		for i := range 2500 {
			x = benchNext(x)
			size := 512 + int(x%(52<<10-512))
			name := filepath.Join("d"+strconv.Itoa(i/50), "f"+strconv.Itoa(i))
			if i%4 == 3 {
				add(name, benchRandom(size, x))
			} else {
				add(name, benchText(size, int(x%1000)))
			}
		}
	}},
}

func benchNext(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

// benchRandom is size bytes zstd cannot shrink (xorshift, not crypto).
func benchRandom(size int, seed uint64) []byte {
	p := make([]byte, size+8)
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := 0; i < size; i += 8 {
		x = benchNext(x)
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	return p[:size]
}

// benchText is size bytes of Go-like source lines, starting at line off.
func benchText(size, off int) []byte {
	var b bytes.Buffer
	for i := off; b.Len() < size; i++ {
		b.WriteString("\tif err := s.write(ctx, entry")
		b.WriteString(strconv.Itoa(i))
		b.WriteString("); err != nil {\n\t\treturn fmt.Errorf(\"transfer: %w\", err)\n\t}\n")
	}
	return b.Bytes()[:size]
}

// benchHalfText alternates 4 KiB of text and 4 KiB of random bytes.
func benchHalfText(size int, seed uint64) []byte {
	p := make([]byte, 0, size)
	for i := 0; len(p) < size; i++ {
		n := min(4096, size-len(p))
		if i%2 == 0 {
			p = append(p, benchText(n, i)...)
		} else {
			p = append(p, benchRandom(n, seed+uint64(i))...)
		}
	}
	return p
}

// makeBenchTree writes t under a new temporary directory and returns it
// with the number of bytes in it.
func makeBenchTree(b *testing.B, t benchTree) (string, int64) {
	b.Helper()
	dir := b.TempDir()
	var total int64
	t.files(func(name string, data []byte) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(data))
	})
	return dir, total
}

// recorder is one end of a net.Pipe that keeps a copy of what it reads.
type recorder struct {
	net.Conn
	mu  sync.Mutex
	got bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.mu.Lock()
	r.got.Write(p[:n])
	r.mu.Unlock()
	return n, err
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.got.Bytes())
}

// record runs one real transfer of dir and returns what each end sent.
func record(b *testing.B, dir string, level zstd.EncoderLevel) (fromSender, fromReceiver []byte) {
	b.Helper()
	ctx := context.Background()
	src, err := Collect(ctx, []string{dir})
	if err != nil {
		b.Fatal(err)
	}
	sink, err := NewDirSink(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	a, c := net.Pipe()
	ra, rc := &recorder{Conn: a}, &recorder{Conn: c}
	_, _, serr, rerr := pipeTrip(src, sink, level, ra, rc, ReceiveOptions{})
	if serr != nil || rerr != nil {
		b.Fatalf("recording a transfer: send %v, receive %v", serr, rerr)
	}
	return rc.bytes(), ra.bytes()
}

// replay is a connection whose reads return a recorded stream and whose
// writes are counted and dropped.
type replay struct {
	r       *bytes.Reader
	written int64
}

func (c *replay) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *replay) Write(p []byte) (int, error) { c.written += int64(len(p)); return len(p), nil }

var benchLevels = []struct {
	name  string
	level zstd.EncoderLevel
}{
	{"default", zstd.SpeedDefault},
	{"fastest", zstd.SpeedFastest},
}

// BenchmarkEncode is the sending end: hashing every file (Collect), then
// compressing and framing it (Send), against a receiver that wants all.
func BenchmarkEncode(b *testing.B) {
	for _, t := range benchTrees {
		dir, total := makeBenchTree(b, t)
		for _, l := range benchLevels {
			b.Run(t.name+"/"+l.name, func(b *testing.B) {
				_, answers := record(b, dir, l.level)
				ctx := context.Background()
				b.SetBytes(total)
				b.ReportAllocs()
				var wire int64
				for b.Loop() {
					src, err := Collect(ctx, []string{dir})
					if err != nil {
						b.Fatal(err)
					}
					c := &replay{r: bytes.NewReader(answers)}
					if _, err := Send(ctx, c, src, SendOptions{Level: l.level}); err != nil {
						b.Fatal(err)
					}
					wire = c.written
				}
				b.ReportMetric(float64(total)/float64(wire), "ratio")
			})
		}
	}
}

// BenchmarkDecode is the receiving end: decompressing, hashing and writing
// every file of a recorded stream into a fresh directory.
func BenchmarkDecode(b *testing.B) {
	for _, t := range benchTrees {
		dir, total := makeBenchTree(b, t)
		stream, _ := record(b, dir, zstd.SpeedDefault)
		b.Run(t.name, func(b *testing.B) {
			ctx := context.Background()
			parent := b.TempDir()
			b.SetBytes(total)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dest := filepath.Join(parent, strconv.Itoa(i))
				if err := os.Mkdir(dest, 0o755); err != nil {
					b.Fatal(err)
				}
				sink, err := NewDirSink(dest, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := Receive(ctx, &replay{r: bytes.NewReader(stream)}, sink, ReceiveOptions{}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				sink.Close()
				os.RemoveAll(dest)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkSendReceiveTree is both ends at the sender's default level over
// an in-memory pipe, for each tree.
func BenchmarkSendReceiveTree(b *testing.B) {
	for _, t := range benchTrees {
		dir, total := makeBenchTree(b, t)
		b.Run(t.name, func(b *testing.B) {
			ctx := context.Background()
			parent := b.TempDir()
			b.SetBytes(total)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				dest := filepath.Join(parent, strconv.Itoa(i))
				if err := os.Mkdir(dest, 0o755); err != nil {
					b.Fatal(err)
				}
				src, err := Collect(ctx, []string{dir})
				if err != nil {
					b.Fatal(err)
				}
				sink, err := NewDirSink(dest, nil)
				if err != nil {
					b.Fatal(err)
				}
				a, c := net.Pipe()
				_, _, serr, rerr := pipeTrip(src, sink, zstd.SpeedDefault, a, c, ReceiveOptions{})
				sink.Close()
				if serr != nil || rerr != nil {
					b.Fatal(serr, rerr)
				}
				b.StopTimer()
				os.RemoveAll(dest)
				b.StartTimer()
			}
		})
	}
}

var _ io.ReadWriter = (*replay)(nil)
