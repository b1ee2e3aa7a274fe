package ldm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

// noise is n random bytes from seed: nothing in it repeats.
func noise(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

// encode runs parts through one Encoder, each part in writes of step bytes,
// searched or not as the part says.
func encode(t testing.TB, e *Encoder, step int, parts ...part) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, p := range parts {
		for d := p.data; len(d) > 0; {
			k := min(len(d), step)
			if err := e.Encode(&b, d[:k], p.search); err != nil {
				t.Fatal(err)
			}
			d = d[k:]
		}
	}
	return b.Bytes()
}

type part struct {
	data   []byte
	search bool
}

func decode(stream []byte) ([]byte, error) {
	return io.ReadAll(NewDecoder(bytes.NewReader(stream)))
}

func join(parts []part) []byte {
	var all []byte
	for _, p := range parts {
		all = append(all, p.data...)
	}
	return all
}

// A repeat 5 MiB back (beyond a 4 MiB zstd window, within Window) goes as
// copies: the stream is barely longer than the bytes that do not repeat,
// and decodes to the input, whatever the size of the writes.
func TestFarRepeatBecomesCopies(t *testing.T) {
	block := noise(3<<20, 1)
	parts := []part{{block, true}, {noise(5<<20, 2), true}, {block, true}}
	for _, step := range []int{1 << 20, 256 << 10, 32 << 10, 3<<20 + 17} {
		e := NewEncoder()
		stream := encode(t, e, step, parts...)
		if n := len(block) + 5<<20; len(stream) > n+n/100 {
			t.Errorf("writes of %d: %d bytes for %d that do not repeat; the repeat was not copied", step, len(stream), n)
		}
		if e.Copied < int64(len(block))*99/100 {
			t.Errorf("writes of %d: %d bytes copied of the %d repeated", step, e.Copied, len(block))
		}
		got, err := decode(stream)
		if err != nil || !bytes.Equal(got, join(parts)) {
			t.Fatalf("writes of %d: decoded %d bytes, %v; want the %d written", step, len(got), err, len(join(parts)))
		}
	}
}

// A repeat further back than Window is out of reach: its bytes go as
// literals, and no copy reaches outside the history.
func TestRepeatBeyondWindowIsLiteral(t *testing.T) {
	block := noise(1<<20, 3)
	parts := []part{{block, true}, {noise(Window, 4), true}, {block, true}}
	e := NewEncoder()
	stream := encode(t, e, 1<<20, parts...)
	if e.Copied != 0 {
		t.Errorf("%d bytes copied from beyond the window", e.Copied)
	}
	if got, err := decode(stream); err != nil || !bytes.Equal(got, join(parts)) {
		t.Fatalf("decoded %d bytes, %v", len(got), err)
	}
}

// Bytes given unsearched go as they are and still count in the history: a
// copy across them reaches the right bytes. A short period repeated, whose
// copies may not overlap their own output, decodes right.
func TestUnsearchedAndRuns(t *testing.T) {
	block, raw := noise(1<<20, 5), noise(1<<20, 6)
	parts := []part{
		{block, true},
		{raw, false},
		{bytes.Repeat(noise(100, 7), 30000), true},
		{block, true},
		{[]byte("tail"), false},
		{nil, true},
	}
	e := NewEncoder()
	stream := encode(t, e, 64<<10, parts...)
	if e.Copied < int64(len(block)) {
		t.Errorf("%d bytes copied; want the block's repeat (%d) and more", e.Copied, len(block))
	}
	if !bytes.Contains(stream, raw[:64<<10]) {
		t.Errorf("the unsearched bytes are not in the stream as they are")
	}
	if got, err := decode(stream); err != nil || !bytes.Equal(got, join(parts)) {
		t.Fatalf("decoded %d bytes, %v", len(got), err)
	}
}

func record(lit string, n, dist uint64) []byte {
	b := binary.AppendUvarint(nil, uint64(len(lit)))
	b = append(b, lit...)
	b = binary.AppendUvarint(b, n)
	if n > 0 {
		b = binary.AppendUvarint(b, dist)
	}
	return b
}

// A hostile or broken stream is refused with ErrCorrupt, or ends with
// io.ErrUnexpectedEOF when it stops inside a record; it never reads
// outside what was decoded.
func TestDecoderRefusesCorruptStreams(t *testing.T) {
	for _, c := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"copy before the start", record("", 4, 4), ErrCorrupt},
		{"copy past the output", record("abc", 4, 4), ErrCorrupt},
		{"copy overlapping itself", record("abc", 3, 2), ErrCorrupt},
		{"copy from zero back", record("abc", 1, 0), ErrCorrupt},
		{"copy beyond the window", record(string(make([]byte, 100)), 1, Window+1), ErrCorrupt},
		{"length overflows", append([]byte{0}, bytes.Repeat([]byte{0xff}, 11)...), ErrCorrupt},
		{"literal cut short", record("abcdef", 0, 0)[:4], io.ErrUnexpectedEOF},
		{"copy length missing", record("abc", 0, 0)[:4], io.ErrUnexpectedEOF},
		{"distance missing", record("abc", 2, 0)[:5], io.ErrUnexpectedEOF},
	} {
		got, err := decode(c.stream)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %q, %v; want %v", c.name, got, err, c.want)
		}
	}
	// A good stream: a copy of exactly its distance, empty records.
	s := append(append(record("abc", 3, 3), record("", 0, 0)...), record("d", 6, 6)...)
	if got, err := decode(s); err != nil || string(got) != "abcabcdbcabcd" {
		t.Errorf("decoded %q, %v; want abcabcdbcabcd", got, err)
	}
}

// refDecode is the format's definition, written as plainly as can be:
// records of literals and copies, up to limit bytes of output. It says
// whether the stream is corrupt (a copy from before the start, from
// further than Window, or longer than its distance) or cut short.
func refDecode(stream []byte, limit int) (out []byte, corrupt, short bool) {
	r := bytes.NewReader(stream)
	for len(out) < limit {
		l, err := binary.ReadUvarint(r)
		if err == io.EOF {
			return out, false, false
		}
		if err != nil {
			return out, !errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.ErrUnexpectedEOF)
		}
		for ; l > 0 && len(out) < limit; l-- {
			b, err := r.ReadByte()
			if err != nil {
				return out, false, true
			}
			out = append(out, b)
		}
		if len(out) >= limit {
			break
		}
		n, err := binary.ReadUvarint(r)
		if err != nil {
			cut := errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF
			return out, !cut, cut
		}
		if n == 0 {
			continue
		}
		d, err := binary.ReadUvarint(r)
		if err != nil {
			cut := errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF
			return out, !cut, cut
		}
		if d > Window || d > uint64(len(out)) || n > d {
			return out, true, false
		}
		// n <= d: the copy reads only bytes already there.
		from := len(out) - int(d)
		out = append(out, out[from:from+int(min(n, uint64(limit-len(out))))]...)
	}
	return out[:limit], false, false
}

// fuzzLimit bounds what a fuzzed stream may decode to: a few bytes of
// copies can stand for megabytes, and the fuzzer must stay fast.
const fuzzLimit = 16 << 10

// The decoder agrees with the format's plain definition on every stream:
// the same bytes, and corrupt exactly where it is.
func FuzzDecoder(f *testing.F) {
	f.Add(record("abc", 3, 3))
	f.Add(append(record("abcdefgh", 4, 8), record("x", 5, 5)...))
	f.Add(append(record("abcdefgh", 8, 8), record("", 16, 16)...))
	f.Add(record("abc", 4, 3))
	f.Add(record("abc", 1, 4))
	f.Add(encode(f, NewEncoder(), 1<<10, part{bytes.Repeat([]byte("0123456789abcdef"), 300), true}))
	f.Fuzz(func(t *testing.T, stream []byte) {
		got, err := io.ReadAll(io.LimitReader(NewDecoder(bytes.NewReader(stream)), fuzzLimit))
		want, corrupt, short := refDecode(stream, fuzzLimit)
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %d bytes, the definition %d (first difference at %d)", len(got), len(want), firstDiff(got, want))
		}
		switch {
		case corrupt && !errors.Is(err, ErrCorrupt):
			t.Fatalf("error %v on a corrupt stream, want ErrCorrupt", err)
		case short && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Fatalf("error %v on a stream cut inside a record, want io.ErrUnexpectedEOF", err)
		case !corrupt && !short && err != nil:
			t.Fatalf("error %v on a good stream", err)
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// encoders are reused across a fuzzer's runs (Reset): a new one's 1 MiB
// table would cost more than the run.
var encoders = sync.Pool{New: func() any { return NewEncoder() }}

// Whatever the bytes and however they are written, they come back.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello hello hello hello hello hello hello hello hello hello hello hello hello"), uint16(7), uint8(1))
	f.Add(bytes.Repeat(noise(300, 9), 5), uint16(100), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, step uint16, unsearched uint8) {
		k := max(int(step), 1)
		var parts []part
		for i := 0; len(data) > 0; i++ {
			n := min(len(data), k)
			parts = append(parts, part{data[:n], unsearched == 0 || i%int(unsearched+1) != 0})
			data = data[n:]
		}
		e := encoders.Get().(*Encoder)
		e.Reset()
		defer encoders.Put(e)
		stream := encode(t, e, k, parts...)
		got, err := decode(stream)
		if err != nil || !bytes.Equal(got, join(parts)) {
			t.Fatalf("decoded %d bytes, %v; want the %d written", len(got), err, len(join(parts)))
		}
	})
}

// A reset encoder writes what a new one writes.
func TestEncoderReset(t *testing.T) {
	first := bytes.Repeat(noise(5000, 1), 3)
	second := append(noise(3000, 2), first[:4000]...)
	e := NewEncoder()
	encode(t, e, 1000, part{first, true})
	e.Reset()
	got := encode(t, e, 1000, part{second, true})
	want := encode(t, NewEncoder(), 1000, part{second, true})
	if !bytes.Equal(got, want) {
		t.Fatalf("a reset encoder wrote %d bytes, a new one %d", len(got), len(want))
	}
	if e.Copied != 0 {
		t.Errorf("Copied = %d after a stream with no repeat of its own, want 0", e.Copied)
	}
}

// benchData is 32 MiB where each 4 MiB block is the one 4 MiB back with
// every 4096th byte changed (binaries that share most of their code), so
// that most of it goes as copies and the rest as literals.
func benchData() []byte {
	p := noise(4<<20, 11)
	for len(p) < 32<<20 {
		b := bytes.Clone(p[len(p)-4<<20:])
		for i := 100; i < len(b); i += 4096 {
			b[i]++
		}
		p = append(p, b...)
	}
	return p
}

func BenchmarkEncode(b *testing.B) {
	data := benchData()
	e := NewEncoder()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for p := data; len(p) > 0; p = p[min(len(p), 256<<10):] {
			if err := e.Encode(io.Discard, p[:min(len(p), 256<<10)], true); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	data := benchData()
	stream := encode(b, NewEncoder(), 256<<10, part{data, true})
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		d := NewDecoder(bytes.NewReader(stream))
		n := 0
		for {
			k, err := d.Read(buf)
			n += k
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		if n != len(data) {
			b.Fatalf("decoded %d bytes of %d", n, len(data))
		}
	}
}

// failing gives its bytes, then err.
type failing struct {
	b   []byte
	err error
}

func (f *failing) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		return 0, f.err
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

// The reader's own error (a broken zstd frame, the peer's abort) comes
// back as it is, not as a corrupt record, wherever in a record it falls.
func TestDecoderPassesReaderErrors(t *testing.T) {
	broken := errors.New("zstd: corrupt block")
	for _, cut := range []int{0, 1, 3, 4, 5} {
		rec := record("abc", 3, 3)[:cut]
		_, err := io.ReadAll(NewDecoder(&failing{rec, broken}))
		if !errors.Is(err, broken) {
			t.Errorf("cut after %d bytes: %v; want the reader's error", cut, err)
		}
	}
}
