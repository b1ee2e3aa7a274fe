package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Metered counts the bytes that cross a connection: for the TLS channel,
// the real bytes on the wire.
type Metered struct {
	net.Conn
	In, Out atomic.Int64
}

// Meter wraps c with byte counters.
func Meter(c net.Conn) *Metered { return &Metered{Conn: c} }

func (m *Metered) Read(p []byte) (int, error) {
	n, err := m.Conn.Read(p)
	m.In.Add(int64(n))
	return n, err
}

func (m *Metered) Write(p []byte) (int, error) {
	n, err := m.Conn.Write(p)
	m.Out.Add(int64(n))
	return n, err
}

// StdioConn is a net.Conn over a reader and a writer, used when the TLS
// bytes travel over an SSH session's stdin and stdout instead of TCP.
type StdioConn struct {
	r    io.Reader
	w    io.Writer
	once sync.Once
	cl   []io.Closer
}

// NewStdioConn makes a connection reading r and writing w; Close closes
// closers (stdin and stdout, so a blocked read or write ends).
func NewStdioConn(r io.Reader, w io.Writer, closers ...io.Closer) *StdioConn {
	return &StdioConn{r: r, w: w, cl: closers}
}

func (s *StdioConn) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *StdioConn) Write(p []byte) (int, error) { return s.w.Write(p) }

func (s *StdioConn) Close() error {
	s.once.Do(func() {
		for _, c := range s.cl {
			c.Close()
		}
	})
	return nil
}

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }

func (s *StdioConn) LocalAddr() net.Addr              { return stdioAddr{} }
func (s *StdioConn) RemoteAddr() net.Addr             { return stdioAddr{} }
func (s *StdioConn) SetDeadline(time.Time) error      { return nil }
func (s *StdioConn) SetReadDeadline(time.Time) error  { return nil }
func (s *StdioConn) SetWriteDeadline(time.Time) error { return nil }

// Stdio is the process's own stdin and stdout as a connection whose Close
// interrupts a blocked read or write: both descriptors are switched to
// non-blocking mode and reopened through Go's poller (a plain os.Stdin
// blocks in read(2), where closing it cannot reach).
func Stdio() (*StdioConn, error) {
	var files [2]*os.File
	for i, name := range []string{"stdin", "stdout"} {
		if err := syscall.SetNonblock(i, true); err != nil {
			return nil, fmt.Errorf("tunnel: %s: %w", name, err)
		}
		files[i] = os.NewFile(uintptr(i), name)
	}
	return NewStdioConn(files[0], files[1], files[0], files[1]), nil
}

// Watch calls onIdle and then closes c when no byte has crossed it, either
// way, for idle. It returns a function that stops watching. A peer
// whose machine vanished, or a link that dropped under an SSH session that
// nobody notices, otherwise leaves an end waiting for ever.
func (c *Conn) Watch(idle time.Duration, onIdle func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(max(idle/8, 10*time.Millisecond))
		defer tick.Stop()
		last, quiet := c.WireBytes(), time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				if n := c.WireBytes(); n != last {
					last, quiet = n, now
					continue
				}
				if now.Sub(quiet) >= idle {
					// First onIdle, so that whoever then reads the
					// close's error can tell the watchdog did it.
					if onIdle != nil {
						onIdle()
					}
					// The batchConn: it closes the socket without
					// waiting for a write blocked on it.
					if c.lanes != nil {
						c.lanes.breakNet()
					} else {
						c.Conn.NetConn().Close()
					}
					return
				}
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// Listen listens on addr, waiting while the port is taken (another nbship
// shipping to this host) until ctx ends; waiting is reported once.
func Listen(ctx context.Context, addr string, waiting func()) (net.Listener, error) {
	told := false
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return ln, err
		}
		if !told && waiting != nil {
			waiting()
			told = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (still taken when the wait ended)", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
