package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// counted counts the reads and writes that reach a connection: with
// ClientOver over it, the syscalls the channel makes.
type counted struct {
	net.Conn
	reads, writes atomic.Int64
}

func (c *counted) Read(p []byte) (int, error) {
	c.reads.Add(1)
	return c.Conn.Read(p)
}

func (c *counted) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// pairOver returns both ends of a pinned channel over a loopback TCP
// connection, each end over wrap(its socket).
func pairOver(t *testing.T, wrap func(net.Conn) net.Conn) (client, server *Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sraw := <-accepted
	if sraw == nil {
		t.Fatal("accept failed")
	}
	return handshake(t, wrap(raw), wrap(sraw))
}

// handshake runs ClientOver on a and ServerOver on b at once.
func handshake(t *testing.T, a, b net.Conn) (client, server *Conn) {
	t.Helper()
	srv, cli := ident(t), ident(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch := make(chan *Conn, 1)
	go func() {
		s, err := ServerOver(ctx, b, srv, cli.Pin())
		if err != nil {
			t.Errorf("ServerOver: %v", err)
		}
		ch <- s
	}()
	c, err := ClientOver(ctx, a, cli, srv.Pin())
	if err != nil {
		t.Fatalf("ClientOver: %v", err)
	}
	s := <-ch
	if s == nil {
		t.FailNow()
	}
	// The transports first: over net.Pipe, close_notify waits for a reader.
	t.Cleanup(func() { a.Close(); b.Close(); c.Close(); s.Close() })
	return c, s
}

// pattern is the content of test streams: the byte at offset i is
// pattern[i%patternLen]. Its period is prime, so it lines up with no
// record or buffer size; it is stored twice, so that any chunk of up to
// patternLen bytes is one slice.
const patternLen = 1<<20 + 7

var pattern = func() []byte {
	p := make([]byte, patternLen, 2*patternLen)
	rand.NewChaCha8([32]byte{'n', 'b'}).Read(p)
	return append(p, p...)
}()

// chunkSize is an irregular size from 1 byte to 1 MiB, most of them small.
func chunkSize(rng *rand.Rand) int { return 1 + rng.IntN(1<<rng.IntN(21)) }

// writeStream writes total bytes of the pattern to w in irregular sizes.
func writeStream(w io.Writer, total int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 1))
	for off := int64(0); off < total; {
		n := int64(chunkSize(rng))
		n = min(n, total-off)
		i := off % patternLen
		m, err := w.Write(pattern[i : i+n])
		if err != nil {
			return err
		}
		if int64(m) != n {
			return io.ErrShortWrite
		}
		off += n
	}
	return nil
}

// readStream reads total bytes of the pattern from r, in irregular sizes,
// and checks every one.
func readStream(r io.Reader, total int64, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, 2))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < total; {
		n := min(int64(chunkSize(rng)), total-off)
		m, err := r.Read(buf[:n])
		i := off % patternLen
		if !bytes.Equal(buf[:m], pattern[i:i+int64(m)]) {
			return errors.New("the stream differs from what was sent")
		}
		off += int64(m)
		if err != nil {
			return err
		}
	}
	return nil
}

// Both ends write and read at once, in sizes from a byte to a MiB, and
// every byte arrives as sent.
func TestBatchedStreamsBothWays(t *testing.T) {
	c, s := pair(t)
	const total = 64 << 20
	bothWays(t, c, s, total, 1)
	if n := c.Meter.Out.Load() + s.Meter.Out.Load(); n < 2*total {
		t.Errorf("%d bytes crossed the wire for %d each way", n, total)
	}
}

// Over an SSH session's stdio (a pipe here), the same.
func TestBatchedStreamsOverStdio(t *testing.T) {
	a, b := net.Pipe()
	c, s := handshake(t, NewStdioConn(a, a, a), NewStdioConn(b, b, b))
	bothWays(t, c, s, 8<<20, 3)
}

// bothWays has c and s each write total bytes to the other and read the
// other's, all at once (streams seed and seed+1), and fails on any error
// or when they stop making progress.
func bothWays(t *testing.T, c, s *Conn, total int64, seed uint64) {
	t.Helper()
	errs := make(chan error, 4)
	go func() { errs <- writeStream(c, total, seed) }()
	go func() { errs <- writeStream(s, total, seed+1) }()
	go func() { errs <- readStream(s, total, seed) }()
	go func() { errs <- readStream(c, total, seed+1) }()
	for range 4 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("no progress: the ends are stuck")
		}
	}
}

// The point of batching: a 16 MiB Write reaches the socket in writes of
// batchSize, not one per TLS record, and the reader takes in many
// records per read.
func TestBatchingSavesSyscalls(t *testing.T) {
	var sent, got *counted
	wrapped := 0
	c, s := pairOver(t, func(conn net.Conn) net.Conn {
		cc := &counted{Conn: conn}
		if wrapped++; wrapped == 1 {
			sent = cc
		} else {
			got = cc
		}
		return cc
	})
	const total = 16 << 20
	records := total / (16 << 10)
	w0, r0 := sent.writes.Load(), got.reads.Load()
	read := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, s, total)
		read <- err
	}()
	if _, err := c.Write(bytes.Repeat(pattern[:1<<20], total>>20)); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	writes, reads := sent.writes.Load()-w0, got.reads.Load()-r0
	t.Logf("%d MiB in %d TLS records or more: %d writes, %d reads", total>>20, records, writes, reads)
	if writes > int64(records/4) {
		t.Errorf("%d MiB took %d writes, want at most %d (at least %d records)", total>>20, writes, records/4, records)
	}
	if reads > int64(records/3) {
		t.Errorf("%d MiB took %d reads, want at most %d (at least %d records)", total>>20, reads, records/3, records)
	}
}

// close_notify follows the last batch: the reader gets all the data and
// then io.EOF, not io.ErrUnexpectedEOF (a connection closed without it).
func TestCloseNotifyReachesThePeer(t *testing.T) {
	for _, total := range []int64{1, 100 << 10, 4 << 20} {
		c, s := pair(t)
		read := make(chan error, 1)
		go func() {
			if err := readStream(s, total, 6); err != nil {
				read <- err
				return
			}
			_, err := s.Read(make([]byte, 1))
			read <- err
		}()
		if err := writeStream(c, total, 6); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close after %d bytes = %v", total, err)
		}
		if err := <-read; err != io.EOF {
			t.Errorf("read after %d bytes and Close = %v, want io.EOF", total, err)
		}
	}
}

// stuckWriter writes to c, whose peer reads nothing, until a write fails.
// Each Write fits in a batch, so the writer ends up blocked writing one out
// after tls.Conn.Write has returned, where tls.Conn.Close cannot see it.
// It returns once c's socket has stopped taking bytes.
func stuckWriter(t *testing.T, c *Conn) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		p := pattern[:100<<10]
		for {
			if _, err := c.Write(p); err != nil {
				done <- err
				return
			}
		}
	}()
	last, since := c.Meter.Out.Load(), time.Now()
	for time.Since(since) < 200*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
		if n := c.Meter.Out.Load(); n != last {
			last, since = n, time.Now()
		}
		select {
		case err := <-done:
			t.Fatalf("Write to a peer that reads nothing failed: %v", err)
		default:
		}
	}
	if c.batch.depth.Load() == 0 {
		t.Fatal("the stuck writer is not in a batch")
	}
	return done
}

// noWriteLeft fails if some goroutine stays inside a write to a channel.
func noWriteLeft(t *testing.T) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		stacks := string(buf[:runtime.Stack(buf, true)])
		stuck := false
		for _, f := range []string{"tunnel.(*Conn).Write", "tunnel.(*Conn).Close", "tunnel.(*batchConn).Write", "tunnel.(*batchConn).begin", "tunnel.(*batchConn).end"} {
			stuck = stuck || strings.Contains(stacks, f)
		}
		if !stuck {
			return
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("a goroutine is still in a channel write:\n%s", stacks)
		}
	}
}

// Watch ends a Write stuck on a peer that stopped reading.
func TestWatchBreaksAStuckWrite(t *testing.T) {
	c, _ := pair(t)
	idle := make(chan struct{})
	stop := c.Watch(300*time.Millisecond, func() { close(idle) })
	defer stop()
	done := stuckWriter(t, c)
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a Write on a closed channel succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not end the stuck Write")
	}
	select {
	case <-idle:
	case <-time.After(5 * time.Second):
		t.Error("the Write ended but Watch did not fire")
	}
	noWriteLeft(t)
}

// Close ends a Write stuck on a peer that stopped reading at once, rather
// than send close_notify after it (which would wait for close_notify's 5 s
// deadline to fail the Write).
func TestCloseBreaksAStuckWrite(t *testing.T) {
	c, _ := pair(t)
	done := stuckWriter(t, c)
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	for _, ch := range []<-chan error{closed, done} {
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			t.Fatal("Close did not end the stuck Write at once")
		}
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}
	noWriteLeft(t)
}

// A Write whose batch cannot go out reports an error, and so does every
// later one, whether the channel or only its socket was closed.
func TestWriteAfterTheSocketClosed(t *testing.T) {
	for name, close := range map[string]func(c *Conn) error{
		"socket":  func(c *Conn) error { return c.Meter.Conn.Close() },
		"channel": func(c *Conn) error { return c.NetConn().Close() },
	} {
		c, _ := pair(t)
		if _, err := c.Write([]byte("ready")); err != nil {
			t.Fatal(err)
		}
		if err := close(c); err != nil {
			t.Fatal(err)
		}
		for i, size := range []int{1, 100 << 10, 1 << 20, 1} {
			if n, err := c.Write(pattern[:size]); err == nil || n != 0 {
				t.Errorf("%s closed: Write %d of %d bytes = %d, %v; want 0 and an error", name, i, size, n, err)
			}
		}
	}
}

// Writev sends a small header and its payload in one batch: one socket
// write for both, where two Writes take two.
func TestWritevIsOneWrite(t *testing.T) {
	var sent *counted
	wrapped := 0
	c, s := pairOver(t, func(conn net.Conn) net.Conn {
		cc := &counted{Conn: conn}
		if wrapped++; wrapped == 1 {
			sent = cc
		}
		return cc
	})
	hdr, payload := []byte{1, 0, 0, 128, 0}, pattern[:32<<10]
	read := make(chan error, 1)
	go func() {
		got := make([]byte, 4*(len(hdr)+len(payload)))
		_, err := io.ReadFull(s, got)
		if err == nil {
			one := append(slices.Clone(hdr), payload...)
			if !bytes.Equal(got, bytes.Repeat(one, 4)) {
				err = errors.New("the bytes arrived out of order")
			}
		}
		read <- err
	}()
	w0 := sent.writes.Load()
	for range 2 {
		if n, err := c.Writev(hdr, payload); err != nil || n != len(hdr)+len(payload) {
			t.Fatalf("Writev = %d, %v", n, err)
		}
	}
	vec := sent.writes.Load() - w0
	for range 2 {
		c.Write(hdr)
		c.Write(payload)
	}
	two := sent.writes.Load() - w0 - vec
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if vec != 2 || two != 4 {
		t.Fatalf("two Writevs took %d socket writes (want 2), two pairs of Writes %d (want 4)", vec, two)
	}
}
