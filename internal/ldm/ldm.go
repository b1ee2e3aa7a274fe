// Package ldm finds long repeats far apart in a byte stream and sends them
// as references to what the receiver already has, before the stream goes
// to zstd: long-distance matching as a layer of its own, because the zstd
// encoder nbship uses has none and its window is 4 MiB.
//
// Binaries that share most of their code (the static qemu emulators of a
// closure, a toolchain's tools, the same library in two store paths) repeat
// each other at distances of several megabytes; zstd's default level with a
// small window sees none of it. On a tar of the bench closure's files
// (352 MB) zstd's default level with a 4 MiB window makes 91.9 MB, and
// 80.5 MB behind this layer, which costs the sender about 1.3 ns a byte
// (the rolling hash, a table lookup every 128 bytes, the history copy) and
// the receiver two copies. The bench closure's NARs: 113 MB become 102 MB.
//
// The encoded stream is a sequence of records:
//
//	uvarint L, L literal bytes, uvarint C, and if C > 0 uvarint D
//
// L bytes as they are, then C bytes copied from D bytes back in the output
// (C <= D <= Window, and no further back than the output goes). The decoder
// keeps the last Window bytes of its output; the encoder the same, and a
// hash table of positions it has seen.
package ldm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Window is how far back a copy may reach: the history each end keeps.
const Window = 16 << 20

const (
	mask = Window - 1
	// tableLog: 2^18 remembered positions (1 MiB), two slots per anchor
	// of a full window.
	tableLog = 18
	// anchorLog: a position is remembered (and looked up) where the rolling
	// hash has anchorLog chosen bits zero: one in 128 on average. The
	// positions depend on the content only, so a repeat has the same ones.
	anchorLog = 7
	// MinMatch is the shortest copy the encoder makes; shorter repeats are
	// zstd's business.
	MinMatch = 64
	// chunk bounds one step of the encoder, so that the history it writes
	// does not overwrite a copy's source while it is searched.
	chunk = Window / 4
)

// gear maps a byte to a random 64-bit value: the rolling hash is
// h = h<<1 + gear[b], whose top bits depend on the last 64 bytes only.
var gear = func() (g [256]uint64) {
	x := uint64(0x9e3779b97f4a7c15)
	for i := range g {
		// splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		g[i] = z ^ z>>31
	}
	return
}()

const anchorMask = (1<<anchorLog - 1) << (64 - tableLog - anchorLog)

// Encoder turns a stream into records. Its zero value is not usable: see
// NewEncoder.
type Encoder struct {
	history
	table []uint32 // end position (its low 32 bits) of a 64-byte window, by its hash
	h     uint64
	hdr   []byte
	// Copied counts the bytes sent as copies.
	Copied int64
}

// NewEncoder returns an Encoder; it holds 1 MiB, and up to Window more as
// the stream goes.
func NewEncoder() *Encoder {
	return &Encoder{table: make([]uint32, 1<<tableLog)}
}

// Reset makes e ready for a new stream, as a new Encoder but keeping its
// memory: a stream of many small ones (or a fuzzer) need not allocate and
// fault in a new table each time.
func (e *Encoder) Reset() {
	clear(e.table)
	// The history's old bytes stay: nothing before pos is ever read.
	e.pos = 0
	e.h = 0
	e.Copied = 0
}

// history is the last Window bytes of the stream, byte i at i & mask; it
// grows to Window as the stream does, so that a short stream costs little.
type history struct {
	hist []byte
	pos  int64 // bytes so far
}

// remember puts c, at most Window bytes, into the history.
func (h *history) remember(c []byte) {
	if n := int64(len(h.hist)); n < Window && h.pos+int64(len(c)) > n {
		grown := make([]byte, min(Window, max(2*n, h.pos+int64(len(c)), 64<<10)))
		copy(grown, h.hist[:h.pos])
		h.hist = grown
	}
	at := int(h.pos & mask)
	k := copy(h.hist[at:], c)
	copy(h.hist, c[k:])
	h.pos += int64(len(c))
}

// Encode writes p to w as records. With search false, p goes as literals
// (it still joins the history: the decoder's and the encoder's must stay
// the same), for bytes not worth looking at, like a gzipped file.
func (e *Encoder) Encode(w io.Writer, p []byte, search bool) error {
	for len(p) > 0 {
		c := p[:min(len(p), chunk)]
		p = p[len(c):]
		if err := e.encodeChunk(w, c, search); err != nil {
			return err
		}
	}
	return nil
}

func (e *Encoder) encodeChunk(w io.Writer, c []byte, search bool) error {
	base := e.pos
	e.remember(c)
	if !search {
		e.h = 0
		return e.record(w, c, 0, 0)
	}
	// Sources must be bytes the history still has after c went in.
	oldest := max(e.pos-Window, 0)
	lit := 0
	h := e.h
	for i := 0; i < len(c); i++ {
		h = h<<1 + gear[c[i]]
		if h&anchorMask != 0 {
			continue
		}
		end := base + int64(i) + 1
		slot := &e.table[h>>(64-tableLog)]
		dist := int64(uint32(end) - *slot)
		*slot = uint32(end)
		cand := end - dist
		if dist == 0 || cand-MinMatch < oldest || i+1-MinMatch < lit {
			continue
		}
		// Back from the window's end while the bytes agree, into the
		// literals not yet sent; then forward to the end of c; no more
		// than dist in all, so that a copy never reads its own output.
		back := e.suffix(c[lit:i+1], cand, min(cand-oldest, dist))
		if back < MinMatch {
			continue // the hashes agreed, the bytes did not
		}
		fwd := e.prefix(c[i+1:], cand, dist-int64(back))
		n := back + fwd
		if err := e.record(w, c[lit:i+1-back], n, dist); err != nil {
			return err
		}
		e.Copied += int64(n)
		lit = i + 1 + fwd
		i = lit - 1
		h = 0
	}
	e.h = h
	if lit < len(c) {
		return e.record(w, c[lit:], 0, 0)
	}
	return nil
}

// suffix is how many bytes at the end of a are the same as the history's
// before position at, up to limit.
func (e *Encoder) suffix(a []byte, at, limit int64) int {
	n := 0
	for int64(n) < limit && n < len(a) {
		end := int((at - int64(n)) & mask)
		if end == 0 {
			end = len(e.hist)
		}
		seg := e.hist[max(0, end-int(min(limit-int64(n), int64(len(a)-n)))):end]
		k := commonSuffix(a[:len(a)-n], seg)
		n += k
		if k < len(seg) {
			break
		}
	}
	return n
}

// prefix is how many bytes at the start of a are the same as the
// history's from position at, up to limit.
func (e *Encoder) prefix(a []byte, at, limit int64) int {
	n := 0
	for int64(n) < limit && n < len(a) {
		from := int((at + int64(n)) & mask)
		seg := e.hist[from:min(len(e.hist), from+int(min(limit-int64(n), int64(len(a)-n))))]
		k := commonPrefix(a[n:], seg)
		n += k
		if k < len(seg) {
			break
		}
	}
	return n
}

// commonPrefix is the length of the longest common prefix of a and b,
// compared eight bytes at a time.
func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	k := 0
	for ; k+8 <= n; k += 8 {
		if x := binary.LittleEndian.Uint64(a[k:]) ^ binary.LittleEndian.Uint64(b[k:]); x != 0 {
			return k + bits.TrailingZeros64(x)/8
		}
	}
	for k < n && a[k] == b[k] {
		k++
	}
	return k
}

// commonSuffix is the length of the longest common suffix of a and b.
func commonSuffix(a, b []byte) int {
	n := min(len(a), len(b))
	a, b = a[len(a)-n:], b[len(b)-n:]
	k := 0
	for ; k+8 <= n; k += 8 {
		if x := binary.LittleEndian.Uint64(a[n-k-8:]) ^ binary.LittleEndian.Uint64(b[n-k-8:]); x != 0 {
			return k + bits.LeadingZeros64(x)/8
		}
	}
	for k < n && a[n-k-1] == b[n-k-1] {
		k++
	}
	return k
}

// record writes one record: lit, then a copy of n bytes from dist back.
func (e *Encoder) record(w io.Writer, lit []byte, n int, dist int64) error {
	e.hdr = binary.AppendUvarint(e.hdr[:0], uint64(len(lit)))
	if len(lit) > 0 {
		if _, err := w.Write(e.hdr); err != nil {
			return err
		}
		if _, err := w.Write(lit); err != nil {
			return err
		}
		e.hdr = e.hdr[:0]
	}
	e.hdr = binary.AppendUvarint(e.hdr, uint64(n))
	if n > 0 {
		e.hdr = binary.AppendUvarint(e.hdr, uint64(dist))
	}
	_, err := w.Write(e.hdr)
	return err
}

// ErrCorrupt is a record the encoder cannot have written.
var ErrCorrupt = errors.New("ldm: corrupt stream")

// Decoder reads records from r and gives back the stream.
type Decoder struct {
	r   *bufio.Reader
	src *source
	history
	lit  uint64 // literal bytes left in the current record
	n    int64  // copy bytes left
	dist int64
	more bool // a copy length is still to be read after the literals
}

// NewDecoder returns a Decoder reading from r; it holds 64 KiB, and up to
// Window more as the stream goes.
func NewDecoder(r io.Reader) *Decoder {
	src := &source{r: r}
	return &Decoder{r: bufio.NewReaderSize(src, 64<<10), src: src}
}

// source remembers the error its reader gave, so that the decoder can
// tell it (a broken zstd frame, the peer's abort) from a record's own.
type source struct {
	r   io.Reader
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.err = err
	}
	return n, err
}

// Read gives back the stream. A stream that ends between records ends with
// io.EOF; inside one, with io.ErrUnexpectedEOF.
func (d *Decoder) Read(p []byte) (int, error) {
	for len(p) > 0 {
		switch {
		case d.lit > 0:
			k, err := d.r.Read(p[:min(uint64(len(p)), d.lit)])
			d.remember(p[:k])
			d.lit -= uint64(k)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return k, err
		case d.more:
			if err := d.readCopy(); err != nil {
				return 0, err
			}
		case d.n > 0:
			k := int(min(int64(len(p)), d.n))
			from := (d.pos - d.dist) & mask
			k = min(k, int(Window-from))
			copy(p[:k], d.hist[from:])
			d.remember(p[:k])
			d.n -= int64(k)
			return k, nil
		default:
			l, err := binary.ReadUvarint(d.r)
			if err != nil {
				if err == io.EOF {
					return 0, io.EOF
				}
				return 0, d.bad(err)
			}
			d.lit, d.more = l, true
		}
	}
	return 0, nil
}

func (d *Decoder) readCopy() error {
	d.more = false
	n, err := binary.ReadUvarint(d.r)
	if err != nil {
		return d.bad(err)
	}
	if n == 0 {
		return nil
	}
	dist, err := binary.ReadUvarint(d.r)
	if err != nil {
		return d.bad(err)
	}
	if dist > Window || int64(dist) > d.pos || n > dist {
		return fmt.Errorf("%w: a copy of %d bytes from %d back, %d bytes into the stream", ErrCorrupt, n, dist, d.pos)
	}
	d.n, d.dist = int64(n), int64(dist)
	return nil
}

// bad is the error of a record cut short (io.ErrUnexpectedEOF), of the
// reader under it, or else of a length that overflows (the only error of
// binary.ReadUvarint's own).
func (d *Decoder) bad(err error) error {
	switch {
	case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
		return io.ErrUnexpectedEOF
	case err == d.src.err:
		return err
	}
	return fmt.Errorf("%w: a length overflows", ErrCorrupt)
}
