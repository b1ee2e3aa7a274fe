// Package flow is what the controller does with its hosts: instantiate
// locally, push closures, realise remotely, and run the two ends of the
// channel with the pins exchanged over SSH. cmd/nbship wires it to flags.
package controller

import (
	"bytes"
	"io"
	"sync"
)

// prefixWriter writes each complete line to w with a prefix, so a remote
// command's stderr reads "builder: ..." among other hosts' lines.
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

// logMu serialises all prefixed writers of one process onto stderr.
var logMu sync.Mutex

// Prefixed returns a writer that prefixes each line with "name: ".
func Prefixed(w io.Writer, name string) io.WriteCloser {
	if w == nil {
		w = io.Discard
	}
	return &prefixWriter{mu: &logMu, w: w, prefix: name + ": "}
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.w.Write(append([]byte(p.prefix), p.buf[:i+1]...))
		p.buf = p.buf[i+1:]
	}
	if len(p.buf) > 64<<10 { // a very long line without a newline
		p.w.Write(append(append([]byte(p.prefix), p.buf...), '\n'))
		p.buf = p.buf[:0]
	}
	return len(b), nil
}

// Close writes a last unterminated line.
func (p *prefixWriter) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		p.w.Write(append(append([]byte(p.prefix), p.buf...), '\n'))
		p.buf = nil
	}
	return nil
}
