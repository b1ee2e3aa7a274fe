package transfer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Version is the stream version this nbship speaks. A receiver refuses any
// other: both ends must run the same nbship, which the controller ensures.
// 3: store paths carry their signatures and content address, and the
// receiver may say it is busy (substituting) before its want.
// 4: the want may offer prefixes of files a failed attempt kept, and the
// sender answers each offer in the data (resume.go).
// 5: offers may be of NARs too (narresume.go).
const Version = 5

// magic opens the sender's half of every stream, followed by a big-endian
// uint16 version.
const magic = "NBSHIP\x00"

// Message types. Every message is a type byte, a big-endian uint32 length
// and that many bytes.
const (
	msgReady  = 'R' // receiver → sender: ready, JSON readyMsg
	msgHeader = 'H' // sender → receiver: the manifest, JSON
	msgWant   = 'W' // receiver → sender: bitmap of entries to send, then offers (version 4; of NARs too, 5)
	msgBusy   = 'B' // receiver → sender: still deciding what it wants (empty; version 3), or giving Nix a kept NAR prefix (5)
	msgData   = 'D' // sender → receiver: a chunk of the zstd stream
	msgEnd    = 'E' // sender → receiver: end of the zstd stream
	msgAck    = 'A' // receiver → sender: JSON ackMsg, the final word
	msgAbort  = 'X' // either way: the other end gave up; payload is the reason
)

// Limits on what a peer can make us allocate.
const (
	maxHeader  = 16 << 20 // manifest JSON
	maxControl = 1 << 20  // ready, ack, abort, and want up to 8M entries
	maxChunk   = 4 << 20  // one data message
	sendChunk  = 1 << 20  // what the sender puts in one data message
)

// ErrTruncated is a stream that ended before it said it would.
var ErrTruncated = errors.New("transfer: stream truncated: the connection ended before the transfer was complete")

func writeMsg(w io.Writer, t byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = t
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(append(hdr[:], payload...)); err != nil {
		return err
	}
	return nil
}

// readMsg reads one message whose payload may be at most max bytes.
func readMsg(r io.Reader, max int) (byte, []byte, error) {
	return readMsgInto(r, max, nil)
}

// readMsgInto is readMsg with the payload read into *space, grown as
// needed (nil: a new slice); the payload is valid until the next call.
func readMsgInto(r io.Reader, max int, space *[]byte) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, ErrTruncated
		}
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(max) {
		return 0, nil, refused("message %q of %d bytes is larger than the limit of %d", hdr[0], n, max)
	}
	var p []byte
	if space == nil {
		p = make([]byte, n)
	} else {
		if cap(*space) < int(n) {
			*space = make([]byte, n)
		}
		p = (*space)[:n]
	}
	if _, err := io.ReadFull(r, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, ErrTruncated
		}
		return 0, nil, err
	}
	return hdr[0], p, nil
}

// expect reads a message of type want; an abort becomes a *PeerError.
func expect(r io.Reader, want byte, max int) ([]byte, error) {
	t, p, err := readMsg(r, max)
	if err != nil {
		return nil, err
	}
	if t == msgAbort {
		return nil, &PeerError{Reason: string(p)}
	}
	if t != want {
		return nil, refused("protocol error: got message %q, want %q", t, want)
	}
	return p, nil
}

// RefusedError is a stream the receiver refuses: it breaks a rule of the
// format or does not match what its header announced. Sending the same
// again would be refused again.
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return "transfer: refused stream: " + e.Msg }

// Refusal marks RefusedError as a refusal (see IsRefusal).
func (e *RefusedError) Refusal() {}

func refused(format string, a ...any) error {
	return &RefusedError{Msg: fmt.Sprintf(format, a...)}
}

// PeerRefusedError is, on the sending end, the receiver's word that it
// refused what it was sent.
type PeerRefusedError struct{ Reason string }

func (e *PeerRefusedError) Error() string {
	return "transfer: the receiver refused the stream: " + e.Reason
}

// Refusal marks PeerRefusedError as a refusal (see IsRefusal).
func (e *PeerRefusedError) Refusal() {}

// IsRefusal reports whether err is a refusal of what was sent (by this end
// or, on the sender, by the receiver): any error in its chain with a
// Refusal method, as RefusedError, ManifestError and image's VerifyError
// have. A refusal is final: running the transfer again cannot help.
func IsRefusal(err error) bool {
	var r interface{ Refusal() }
	return errors.As(err, &r)
}

// linkError is an error reading the connection itself (as opposed to what
// came over it): it passes through the decoders unchanged in meaning.
type linkError struct{ err error }

func (e *linkError) Error() string { return e.err.Error() }
func (e *linkError) Unwrap() error { return e.err }

// expectManifest reads the header message and decodes its manifest as it
// arrives, without first holding the whole payload.
func expectManifest(r io.Reader) (*Manifest, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrTruncated
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	switch {
	case hdr[0] == msgAbort && n <= maxControl:
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return nil, ErrTruncated
		}
		return nil, &PeerError{Reason: string(p)}
	case hdr[0] != msgHeader:
		return nil, refused("protocol error: got message %q, want %q", hdr[0], msgHeader)
	case n > maxHeader:
		return nil, refused("message %q of %d bytes is larger than the limit of %d", hdr[0], n, maxHeader)
	}
	m, err := readManifest(linkReader{r}, int64(n))
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return nil, ErrTruncated
	}
	return m, err
}

// expectAck reads the receiver's final word, after any number of busy
// messages (it is giving Nix the start of a NAR a failed attempt kept,
// and reads nothing meanwhile: version 5).
func expectAck(r io.Reader) ([]byte, error) {
	t, p, err := readPastBusy(r)
	if err == nil && t != msgAck {
		err = refused("protocol error: got message %q, want %q", t, msgAck)
	}
	return p, err
}

// readPastBusy reads the first message that is not an empty busy one; an
// abort is the peer's error.
func readPastBusy(r io.Reader) (byte, []byte, error) {
	for {
		t, p, err := readMsg(r, maxControl)
		switch {
		case err == nil && t == msgAbort:
			return t, nil, &PeerError{Reason: string(p)}
		case err != nil || t != msgBusy || len(p) != 0:
			return t, p, err
		}
	}
}

// linkReader marks the errors of reading the connection as the link's.
type linkReader struct{ r io.Reader }

func (l linkReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err != nil && err != io.EOF {
		err = &linkError{err}
	}
	return n, err
}

// expectWant reads the receiver's want, after any number of busy
// messages (it is substituting: they keep the channel from looking idle).
func expectWant(r io.Reader) ([]byte, error) {
	t, p, err := readPastBusy(r)
	switch {
	case err != nil:
		return nil, err
	case t == msgAck:
		// The receiver refused the manifest: its final word, early.
		var a ackMsg
		if json.Unmarshal(p, &a) == nil && !a.OK && a.Error != "" {
			if a.Refused {
				return nil, &PeerRefusedError{Reason: a.Error}
			}
			return nil, &PeerError{Reason: a.Error}
		}
		return nil, errors.New("transfer: protocol error: an acknowledgement before the want")
	case t != msgWant:
		return nil, fmt.Errorf("transfer: protocol error: got message %q, want %q", t, msgWant)
	}
	return p, nil
}

// busyEvery is how often a receiver still deciding what it wants says so.
var busyEvery = 10 * time.Second

// keepBusy sends a busy message every busyEvery until stop is called
// (which waits for the last one to be written): nothing else may write to
// w meanwhile.
func keepBusy(w io.Writer) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(busyEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if writeMsg(w, msgBusy, nil) != nil {
					return
				}
			}
		}
	}()
	return func() {
		close(done)
		<-ended
	}
}

// PeerError is the other end's reason for giving up.
type PeerError struct{ Reason string }

func (e *PeerError) Error() string { return "transfer: the other end stopped: " + e.Reason }

// chunkWriter turns writes into data messages.
type chunkWriter struct {
	w     io.Writer
	count func(int)
	// holding: the messages are gathered in held (payload bytes: heldN)
	// until release, not written: the adapter times the compressor
	// without the link's pace in it.
	holding bool
	held    []byte
	heldN   int
}

// hold gathers the messages written from now on in memory.
func (c *chunkWriter) hold() { c.holding = true }

// release writes what hold gathered, in one write, and writes through
// again.
func (c *chunkWriter) release() error {
	c.holding = false
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.w.Write(c.held)
	if err == nil && c.count != nil {
		c.count(c.heldN)
	}
	c.held, c.heldN = c.held[:0], 0
	if err != nil {
		return writeErr{err}
	}
	return nil
}

// vectorWriter writes several buffers as one write (tunnel.Conn: one batch
// of TLS records, so a data message's header does not cost a write of its
// own).
type vectorWriter interface {
	Writev(bufs ...[]byte) (int, error)
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), sendChunk)
		// Header and payload go as two writes (one, to a vectorWriter):
		// no copy of the payload.
		var hdr [5]byte
		hdr[0] = msgData
		binary.BigEndian.PutUint32(hdr[1:], uint32(k))
		if c.holding {
			c.held = append(append(c.held, hdr[:]...), p[:k]...)
			c.heldN += k
			n += k
			p = p[k:]
			continue
		}
		if vw, ok := c.w.(vectorWriter); ok {
			if _, err := vw.Writev(hdr[:], p[:k]); err != nil {
				return n, err
			}
		} else {
			if _, err := c.w.Write(hdr[:]); err != nil {
				return n, err
			}
			if _, err := c.w.Write(p[:k]); err != nil {
				return n, err
			}
		}
		if c.count != nil {
			c.count(k)
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// chunkReader reads data messages until the end message, then returns EOF.
type chunkReader struct {
	r     io.Reader
	buf   []byte
	space []byte // where messages are read, reused
	done  bool
	count func(int)
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		if c.done {
			return 0, io.EOF
		}
		t, payload, err := readMsgInto(c.r, maxChunk, &c.space)
		if err != nil {
			if errors.Is(err, ErrTruncated) || IsRefusal(err) {
				return 0, err
			}
			return 0, &linkError{err}
		}
		switch t {
		case msgData:
			c.buf = payload
			if c.count != nil {
				c.count(len(payload))
			}
		case msgEnd:
			if len(payload) != 0 {
				return 0, refused("protocol error: end message with a payload")
			}
			c.done = true
		case msgAbort:
			return 0, &PeerError{Reason: string(payload)}
		default:
			return 0, refused("protocol error: got message %q inside the data", t)
		}
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}
