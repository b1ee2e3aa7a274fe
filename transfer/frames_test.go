package transfer

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nbship/nbship/internal/ldm"
)

func TestIncompressible(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		data []byte
		want bool
	}{
		{"random", benchRandom(3<<20, 1), true},
		{"text", benchText(3<<20, 0), false},
		{"half text", benchHalfText(3<<20, 2), false},
		{"small random", benchRandom(sampleMin-1, 3), false},
	} {
		p := filepath.Join(dir, tc.name)
		if err := os.WriteFile(p, tc.data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got := incompressible(f, int64(len(tc.data)), make([]byte, sampleSize))
		f.Close()
		if got != tc.want {
			t.Errorf("incompressible(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
	if incompressible(bytes.NewReader(nil), 4<<20, make([]byte, sampleSize)) {
		t.Error("a file that cannot be read is incompressible; want it sent the usual way, where the error shows")
	}
}

// The frames writer switches between the encoder and raw frames in any
// order; the receiver's decoder reads the concatenation as one stream.
func TestFramesRoundTrip(t *testing.T) {
	for _, long := range []bool{false, true} {
		framesRoundTrip(t, long)
	}
}

func framesRoundTrip(t *testing.T, long bool) {
	type part struct {
		stored bool
		data   []byte
	}
	random, text := benchRandom(300<<10, 5), benchText(200<<10, 0)
	parts := []part{
		{true, random}, {true, nil}, {false, text}, {true, random[:rawBlock]},
		{false, nil}, {false, text[:100]}, {true, random[:7]}, {true, random[7:]},
	}
	var wire bytes.Buffer
	f := &frames{cw: &wire, level: zstd.SpeedDefault, long: long}
	var want []byte
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.stored {
			w, err = f.stored()
		} else {
			w, err = f.compressed()
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(p.data); err != nil {
			t.Fatal(err)
		}
		want = append(want, p.data...)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b := wire.Bytes()
	if binary.LittleEndian.Uint32(b) != zstdMagic || b[4] != 0 || b[5] != rawWindowDesc {
		t.Errorf("long %v: the stream starts % x, want a raw frame's header", long, b[:6])
	}
	// Stored bytes cost their size plus block headers (and ldm's record
	// headers), no more.
	if hdr := b[6:9]; hdr[0]&7 != 0 || int(hdr[0])>>3|int(hdr[1])<<5|int(hdr[2])<<13 != rawBlock {
		t.Errorf("long %v: first block header % x, want a full raw block that is not the last", long, hdr)
	}
	if long && !bytes.Contains(b, random[:rawBlock/2]) {
		t.Errorf("long: the stored bytes are not in the stream as they are")
	}
	dec, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var r io.Reader = dec
	if long {
		r = ldm.NewDecoder(dec)
	}
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("long %v: decoding: %v", long, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("long %v: decoded %d bytes, want the %d written", long, len(got), len(want))
	}
}

// Files zstd would not shrink cross as raw frames between compressed ones,
// byte for byte, and cost barely more than their size on the wire.
func TestRoundTripStoredFiles(t *testing.T) {
	src := t.TempDir()
	files := map[string][]byte{
		"a-initrd": benchRandom(3<<20, 7),
		"b-kernel": benchText(2<<20, 0),
		"c-blob":   benchRandom(sampleMin+12345, 8),
		"d-ipxe":   []byte("#!ipxe\n"),
	}
	for n, d := range files {
		mkfile(t, filepath.Join(src, n), d, 0o644)
	}
	dir, sent, _, serr, rerr := roundTrip(t, nil, src)
	if serr != nil || rerr != nil {
		t.Fatalf("Send = %v, Receive = %v", serr, rerr)
	}
	for n, d := range files {
		got, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil || !bytes.Equal(got, d) {
			t.Errorf("%s arrived as %d bytes (%v), want the %d sent", n, len(got), err, len(d))
		}
	}
	stored := int64(len(files["a-initrd"]) + len(files["c-blob"]))
	if sent.Compressed < stored || sent.Compressed > stored+stored/100+int64(len(files["b-kernel"]))/4 {
		t.Errorf("%d bytes in the stream for %d incompressible and %d of text", sent.Compressed, stored, len(files["b-kernel"]))
	}
}

// A repeat further back than the zstd window (the same 5 MiB twice, 5 MiB
// apart) crosses once: internal/ldm sends the second as copies. Without it
// the default level sends both.
func TestFramesCopyFarRepeats(t *testing.T) {
	data := repeatingData(5<<20, false)
	var wire bytes.Buffer
	f := &frames{cw: &wire, level: zstd.SpeedDefault, long: true}
	w, err := f.compressed()
	if err != nil {
		t.Fatal(err)
	}
	for p := data; len(p) > 0; p = p[min(len(p), 256<<10):] {
		if _, err := w.Write(p[:min(len(p), 256<<10)]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(encoderWindow))
	plain := len(enc.EncodeAll(data, nil))
	if wire.Len() > plain*3/4 {
		t.Errorf("%d bytes on the wire, zstd alone %d: the repeat was sent twice", wire.Len(), plain)
	}
	dec, err := zstd.NewReader(&wire)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	if got, err := io.ReadAll(ldm.NewDecoder(dec)); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("decoded %d bytes, %v; want the %d written", len(got), err, len(data))
	}
}
