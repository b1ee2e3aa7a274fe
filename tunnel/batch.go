package tunnel

import (
	"bufio"
	"net"
	"sync"
	"sync/atomic"
)

// batchSize is how many bytes of TLS records a Conn.Write gathers before
// handing them to the connection, and how much one read asks of it.
// crypto/tls writes every record (at most 16 KiB of data) with a write of
// its own and reads about one record per read: ~4500 syscalls each way for
// a 73 MB transfer, a measurable part of it over a fast link.
const batchSize = 256 << 10

// batchConn sits between the tls.Conn and the Metered connection, so the
// meter and the socket see what really crosses the wire.
//
// Writes are gathered only inside a batch, which is a Conn.Write: the
// records tls makes of it are appended, handed on whenever batchSize is
// reached, and all of them by the end of the Write. Every other write (the
// handshake, close_notify, the KeyUpdate that a Read answers) goes straight
// through, after whatever is already gathered, so that nothing the peer
// waits for stays here. A KeyUpdate that tls slips between the records of a
// batch is appended like them, in order, and goes out by the end of it.
//
// Nothing here may call into the tls.Conn while holding mu: tls writes
// into it while holding its own locks.
type batchConn struct {
	net.Conn // the Metered connection
	r        *bufio.Reader

	mu    sync.Mutex
	buf   []byte       // records gathered, not yet written
	err   error        // the first write error: every later write fails with it
	depth atomic.Int32 // batches open; changed under mu, read without by Close

	// closing stops new batches once Conn.Close began (see stopBatching);
	// closed makes writes fail at once, rather than wait for mu behind a
	// write that the close is there to break.
	closing, closed atomic.Bool
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{
		Conn: c,
		r:    bufio.NewReaderSize(c, batchSize),
		buf:  make([]byte, 0, batchSize),
	}
}

// Read reads through the buffer: one read of the connection fills it with
// whatever has arrived (it never waits for more), and tls then takes its
// records from memory. tls.Conn is the only reader, handshake included, and
// it reads one goroutine at a time.
func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *batchConn) Write(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, net.ErrClosed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.depth.Load() == 0 || len(p) > cap(b.buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		var n int
		n, b.err = b.Conn.Write(p)
		return n, b.err
	}
	if len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// flushLocked writes out what is gathered. Its deadline is the
// connection's, so SetWriteDeadline bounds it like any write. An error is
// kept: records may have gone out in part, and nothing sent after them
// could make sense to the peer (tls.Conn keeps its write errors too).
func (b *batchConn) flushLocked() error {
	if b.err == nil && len(b.buf) > 0 {
		_, b.err = b.Conn.Write(b.buf)
	}
	b.buf = b.buf[:0]
	return b.err
}

// begin opens a batch, unless Close has begun: a Write that starts then
// goes straight through, as tls.Conn.Close expects of a concurrent Write.
func (b *batchConn) begin() bool {
	if b.closing.Load() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.depth.Add(1)
	if b.closing.Load() {
		b.depth.Add(-1)
		return false
	}
	return true
}

// end writes out what the batch gathered and closes it. The error is the
// batch's: its records did not all reach the connection.
func (b *batchConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	err := b.flushLocked()
	b.depth.Add(-1)
	return err
}

// stopBatching makes later Writes go straight through and reports whether
// a batch is open. begin adds to depth before it looks at closing, and this
// sets closing before it looks at depth, so a Write that begins at the same
// time is either seen here or does not batch.
func (b *batchConn) stopBatching() bool {
	b.closing.Store(true)
	return b.depth.Load() > 0
}

// Close closes the connection without waiting for mu: Watch and Conn.Close
// call it precisely to end a write blocked on a peer that reads no more,
// which holds mu until the connection fails under it.
func (b *batchConn) Close() error {
	b.closed.Store(true)
	return b.Conn.Close()
}
