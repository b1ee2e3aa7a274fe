package transfer

// The spool between the receiver and nix-store --serve: Nix restores a
// path of many small files, and registers it, more slowly than a fast link
// delivers it, and a pipe would make the sender wait for it. Bytes for Nix
// wait instead in an unlinked temporary file (in the page cache, mostly),
// fed to Nix by a goroutine as fast as it reads, so the network runs ahead
// of the import by up to maxLag; what Nix has read is punched out of the
// file as it goes, so the disk holds no more than that lag.

import (
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// maxLag bounds the backlog Nix must still import when the last byte has
// arrived; while it does, nothing crosses the channel, and both ends'
// idle watchdogs (60 s by default) must not take that for a dead link: at
// 256 MiB a Nix importing at 5 MB/s or more keeps well inside them.
var maxLag int64 = 256 << 20 // bytes the network may run ahead of Nix (a variable for tests)

const (
	punchGap = 16 << 20 // free the file's head in steps of this
	feedSize = 256 << 10
)

type spool struct {
	f    *os.File
	to   io.Writer // nix-store's input
	done chan struct{}

	mu     sync.Mutex
	cond   sync.Cond
	w      int64 // bytes written
	r      int64 // bytes passed on to Nix
	end    int64 // where feeding stops, once closed
	closed bool
	err    error // why feeding failed; writes fail with it
}

// newSpool starts feeding to; its temporary file is in dir ("" for the
// default) and has no name.
func newSpool(dir string, to io.Writer) (*spool, error) {
	f, err := os.CreateTemp(dir, "nbship-spool-")
	if err != nil {
		return nil, fmt.Errorf("transfer: the import's spool: %w (TMPDIR chooses where it goes)", err)
	}
	os.Remove(f.Name())
	s := &spool{f: f, to: to, done: make(chan struct{})}
	s.cond.L = &s.mu
	go s.feed()
	return s, nil
}

// Write appends p; it waits while Nix is more than maxLag behind.
func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	for s.w-s.r > maxLag && s.err == nil {
		s.cond.Wait()
	}
	err, w := s.err, s.w
	s.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, err := s.f.WriteAt(p, w)
	s.mu.Lock()
	s.w += int64(n)
	s.cond.Broadcast()
	s.mu.Unlock()
	if err != nil {
		return n, fmt.Errorf("transfer: the import's spool: %w (TMPDIR chooses where it goes)", err)
	}
	return n, nil
}

// offset is how many bytes have been written.
func (s *spool) offset() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w
}

func (s *spool) feed() {
	defer close(s.done)
	buf := make([]byte, feedSize)
	var punched int64
	for {
		s.mu.Lock()
		for s.r == s.w && !s.closed && s.err == nil {
			s.cond.Wait()
		}
		limit := s.w
		if s.closed {
			limit = min(limit, s.end)
		}
		if s.err != nil || s.r >= limit {
			s.mu.Unlock()
			return
		}
		r := s.r
		s.mu.Unlock()
		n, err := s.f.ReadAt(buf[:min(int64(len(buf)), limit-r)], r)
		if n > 0 {
			_, err = s.to.Write(buf[:n])
		}
		s.mu.Lock()
		if err != nil {
			s.err = err
		}
		s.r += int64(n)
		s.cond.Broadcast()
		s.mu.Unlock()
		if s.r-punched >= punchGap {
			// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; where the file
			// system cannot, the file just keeps its head until closed.
			if syscall.Fallocate(int(s.f.Fd()), 0x02|0x01, punched, s.r-punched) == nil {
				punched = s.r
			}
		}
	}
}

// finish passes everything written on to Nix, then returns the feeding's
// error, if any.
func (s *spool) finish() error {
	return s.stopAt(-1)
}

// cut passes on what was written before at, and nothing after; it reports
// whether Nix had already been given bytes past at.
func (s *spool) cut(at int64) (past bool) {
	s.stopAt(at)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r > at
}

func (s *spool) stopAt(at int64) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.end = s.w
		if at >= 0 {
			s.end = min(at, s.w)
		}
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	<-s.done
	s.f.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}
