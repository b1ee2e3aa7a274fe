package transfer

// The data stream is a sequence of zstd frames, which the receiver's
// decoder reads as one: runs of compressible entries go through the zstd
// encoder, and a file that zstd would not shrink (an initrd already gzipped,
// say) goes as a frame of raw blocks, which costs no compression time.
// For a closure (Manifest.Long) the frames carry the entries' bytes as
// internal/ldm encodes them: repeats up to 16 MiB back, which zstd's 4 MiB
// window cannot see, go as copies; bytes in raw frames go as literals,
// unsearched. Files go as they are: a kernel and an initrd do not repeat
// each other, and the search would cost a netboot image 40 ms.

import (
	"encoding/binary"
	"io"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/nbship/nbship/internal/ldm"
)

// Raw frames: the zstd magic, a frame header with no content size, no
// checksum and a 128 KiB window, then blocks of up to 128 KiB, each behind
// a 3-byte header (bit 0: last block; bits 1-2: type, 0 for raw; bits
// 3-23: size). An empty last block ends the frame.
const (
	rawBlock      = 128 << 10
	zstdMagic     = 0xFD2FB528
	rawWindowDesc = (17 - 10) << 3 // window log 17: 128 KiB
)

// encoderWindow is the zstd window: half the default level's 8 MiB, for
// 0.1% more bytes on a Go toolchain's tree and less memory per encoder.
const encoderWindow = 4 << 20

// harderWindow is the window of the harder level a slow link gets (see
// adapter.probeLevel). Binaries that share most of their code (the static
// qemu emulators of a closure, a toolchain's tools) repeat each other at
// distances of 10 MB and more; internal/ldm sends the long repeats as
// copies, and a wider window finds the shorter matches between them. On a
// tar of the bench closure's files (352 MB), with ldm in front: the default
// level with a 4 MiB window makes 80.5 MB, the better level 76.5 MB with
// 4 MiB, 72.2 MB with 8 MiB, 70.9 MB with 16 MiB (91.9 MB at the default
// level without ldm). 8 MiB keeps the sender's peak well under 64 MiB with
// ldm's 17 MiB beside it (56 MiB at 20 Mbit on the rig).
const harderWindow = 8 << 20

// frames writes the stream into cw, switching between the encoder and raw
// frames as asked.
type frames struct {
	cw     io.Writer
	level  zstd.EncoderLevel
	window int // 0: encoderWindow
	enc    *zstd.Encoder
	open   bool   // the encoder has a frame open
	buf    []byte // one raw block with its header
	raw    bool   // a raw frame is open
	// long: the bytes go through far, the ldm.Encoder made on the first
	// write.
	long bool
	far  *ldm.Encoder
	// storedBytes counts the bytes sent in raw frames (with ldm, its
	// record headers too: a few bytes in 256 KiB).
	storedBytes int64
	// moves counts the level changes (setLevel).
	moves int
}

// way is stored() when raw, else compressed().
func (f *frames) way(raw bool) (io.Writer, error) {
	if raw {
		return f.stored()
	}
	return f.compressed()
}

// flush writes out everything given so far, without ending the frame.
func (f *frames) flush() error {
	if f.raw {
		return f.flushBlock(false)
	}
	if f.open {
		if err := f.enc.Flush(); err != nil {
			return writeErr{err}
		}
	}
	return nil
}

// compressed returns the writer for compressible bytes.
func (f *frames) compressed() (io.Writer, error) {
	if err := f.endRaw(); err != nil {
		return nil, err
	}
	if f.enc == nil {
		window := f.window
		if window == 0 {
			window = encoderWindow
		}
		enc, err := zstd.NewWriter(f.cw, zstd.WithEncoderLevel(f.level), zstd.WithEncoderConcurrency(runtime.NumCPU()),
			zstd.WithWindowSize(window))
		if err != nil {
			return nil, err
		}
		f.enc = enc
		f.open = true
	} else if !f.open {
		f.enc.Reset(f.cw)
		f.open = true
	}
	if f.long {
		return longWriter{f, f.enc, true}, nil
	}
	return f.enc, nil
}

// longWriter puts what is written through the frames' ldm.Encoder into w,
// searching for repeats or not.
type longWriter struct {
	f      *frames
	w      io.Writer
	search bool
}

func (w longWriter) Write(p []byte) (int, error) {
	if w.f.far == nil {
		w.f.far = ldm.NewEncoder()
	}
	if err := w.f.far.Encode(w.w, p, w.search); err != nil {
		return 0, err
	}
	return len(p), nil
}

// setLevel ends the open frame and makes the next ones at level with
// window (0: encoderWindow). The old encoder is dropped and its memory
// given back first, so that the two are not both in the peak.
func (f *frames) setLevel(level zstd.EncoderLevel, window int) error {
	if err := f.Close(); err != nil {
		return err
	}
	f.enc = nil
	f.level, f.window = level, window
	f.moves++
	debug.FreeOSMemory()
	return nil
}

// stored returns the writer for bytes sent as they are.
func (f *frames) stored() (io.Writer, error) {
	if f.open {
		f.open = false
		if err := f.enc.Close(); err != nil {
			return nil, writeErr{err}
		}
	}
	if !f.raw {
		hdr := binary.LittleEndian.AppendUint32(nil, zstdMagic)
		hdr = append(hdr, 0, rawWindowDesc)
		if _, err := f.cw.Write(hdr); err != nil {
			return nil, writeErr{err}
		}
		f.raw = true
		if f.buf == nil {
			f.buf = make([]byte, 3, 3+rawBlock)
		}
	}
	if f.long {
		return longWriter{f, rawWriter{f}, false}, nil
	}
	return rawWriter{f}, nil
}

type rawWriter struct{ f *frames }

// Write fills blocks of rawBlock bytes and sends each whole one.
func (w rawWriter) Write(p []byte) (int, error) {
	f := w.f
	n := 0
	for len(p) > 0 {
		k := min(len(p), 3+rawBlock-len(f.buf))
		f.buf = append(f.buf, p[:k]...)
		p = p[k:]
		n += k
		f.storedBytes += int64(k)
		if len(f.buf) == 3+rawBlock {
			if err := f.flushBlock(false); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (f *frames) flushBlock(last bool) error {
	size := len(f.buf) - 3
	if size == 0 && !last {
		return nil
	}
	h := uint32(size) << 3
	if last {
		h |= 1
	}
	f.buf[0], f.buf[1], f.buf[2] = byte(h), byte(h>>8), byte(h>>16)
	_, err := f.cw.Write(f.buf)
	f.buf = f.buf[:3]
	if err != nil {
		return writeErr{err}
	}
	return nil
}

// endRaw ends an open raw frame with its last block.
func (f *frames) endRaw() error {
	if !f.raw {
		return nil
	}
	f.raw = false
	return f.flushBlock(true)
}

// Close ends whatever frame is open.
func (f *frames) Close() error {
	if err := f.endRaw(); err != nil {
		return err
	}
	if f.open {
		f.open = false
		if err := f.enc.Close(); err != nil {
			return writeErr{err}
		}
	}
	return nil
}

// abort drops the encoder after a failure.
func (f *frames) abort() {
	if f.enc != nil {
		f.enc.Close()
	}
}

// Sampling: a file of at least sampleMin bytes whose samples zstd's fastest
// level shrinks by less than 3% is sent stored.
const (
	sampleMin   = 1 << 20
	sampleSize  = 64 << 10
	sampleRatio = 0.97
)

// sampler is made on first use: most nbship commands send nothing.
var sampler = sync.OnceValue(func() *zstd.Encoder {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	return enc
})

// incompressible tells whether zstd would gain next to nothing on f, of
// size bytes, from three samples at a quarter, half and three quarters of
// it, read into buf. A read error counts as compressible: reading the file
// for real reports it.
func incompressible(f io.ReaderAt, size int64, buf []byte) bool {
	if size < sampleMin {
		return false
	}
	buf = buf[:sampleSize]
	var in, out int
	var dst []byte
	for q := int64(1); q <= 3; q++ {
		n, _ := f.ReadAt(buf, size*q/4-sampleSize/2)
		dst = sampler().EncodeAll(buf[:n], dst[:0])
		in += n
		out += len(dst)
	}
	return in > 0 && float64(out) >= sampleRatio*float64(in)
}
