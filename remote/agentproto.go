package remote

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// The agent protocol (see docs/design.md, "One session per host"). One
// connection carries one command:
//
//	controller -> agent: a request, one JSON line (agentRequest), then
//	                     frames: stdin data, stdin EOF, kill
//	agent -> controller: frames: stdout data, stderr data, then one exit
//	                     frame (a 4-byte big-endian status)
//
// A frame is a type byte, a 4-byte big-endian length and that many bytes.
// The connection ending before the exit frame means the other side is gone:
// the agent then kills the command's process group.

const (
	agentVersion = 1

	frameStdout   = 1 // agent -> controller
	frameStderr   = 2
	frameExit     = 3
	frameStdin    = 4 // controller -> agent
	frameStdinEOF = 5
	frameKill     = 6 // stop the command: TERM to its group, KILL after a grace period

	maxFrame      = 1 << 20
	maxRequest    = 1 << 20
	agentLinePfx  = "nbship-agent-socket "
	agentMaxLines = 16 << 10 // what a login shell may print before the socket line
)

// agentRequest is the first line of a connection.
type agentRequest struct {
	V     int               `json:"v"`
	Argv  []string          `json:"argv"`
	Env   map[string]string `json:"env,omitempty"`
	Stdin bool              `json:"stdin"` // false: the command's stdin is /dev/null
}

func (r *agentRequest) check() error {
	if r.V != agentVersion {
		return fmt.Errorf("agent: protocol version %d, want %d", r.V, agentVersion)
	}
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return errors.New("agent: empty argv")
	}
	for k := range r.Env {
		if !validEnvName(k) {
			return fmt.Errorf("agent: bad environment variable name %q", k)
		}
	}
	return nil
}

// readRequest reads the request line.
func readRequest(br *bufio.Reader) (*agentRequest, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxRequest {
			return nil, errors.New("agent: request line too long")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) == 0 {
			return nil, io.EOF // a probe: connected, asked nothing
		}
		if err != nil {
			return nil, fmt.Errorf("agent: reading the request: %w", err)
		}
		break
	}
	var r agentRequest
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, fmt.Errorf("agent: bad request: %w", err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// frameWriter writes frames; it is safe for concurrent use.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) frame(typ byte, b []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		n := min(len(b), maxFrame)
		var h [5]byte
		h[0] = typ
		binary.BigEndian.PutUint32(h[1:], uint32(n))
		if _, err := f.w.Write(append(h[:], b[:n]...)); err != nil {
			return err
		}
		b = b[n:]
		if len(b) == 0 {
			return nil
		}
	}
}

// streamWriter is an io.Writer sending frames of one type.
type streamWriter struct {
	f   *frameWriter
	typ byte
}

func (s streamWriter) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if err := s.f.frame(s.typ, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// readFrame reads one frame into buf (grown as needed).
func readFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("agent: frame of %d bytes", n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return h[0], buf, nil
}
