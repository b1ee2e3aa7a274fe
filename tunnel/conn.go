package tunnel

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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

// Stdio is the process's own stdin and stdout as a connection.
func Stdio() *StdioConn { return NewStdioConn(os.Stdin, os.Stdout, os.Stdin, os.Stdout) }
