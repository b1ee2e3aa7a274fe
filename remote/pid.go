package remote

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"strconv"
	"sync"
	"time"
)

// pidFilter sits on the stderr of a command that is not watched. The
// command line first prints the login shell's pid on stderr, with a token
// of its own; the filter takes that line out of the stream and passes
// everything else on. The shell is the leader of the process group sshd
// made for the session, so the pid names the group to kill.
type pidFilter struct {
	token string
	next  io.Writer

	mu    sync.Mutex
	buf   []byte
	done  bool          // the line was seen, or will not come
	known chan struct{} // closed when done
	pid   int
}

func newPIDFilter(next io.Writer) *pidFilter {
	var b [8]byte
	rand.Read(b[:])
	return &pidFilter{token: hex.EncodeToString(b[:]), next: next, known: make(chan struct{})}
}

// script prefixes line with the printing of the pid.
func (f *pidFilter) script(line string) string {
	return "printf 'nbship-pid:" + f.token + ":%s\\n' \"$$\" >&2\n" + line
}

// The pid line should be the first; a login shell's startup files may
// print before it, but not this much.
const maxPIDSearch = 16 << 10

func (f *pidFilter) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return f.next.Write(b)
	}
	f.buf = append(f.buf, b...)
	prefix := []byte("nbship-pid:" + f.token + ":")
	for {
		i := bytes.IndexByte(f.buf, '\n')
		if i < 0 {
			break
		}
		line := f.buf[:i]
		if rest, ok := bytes.CutPrefix(line, prefix); ok {
			if pid, err := strconv.Atoi(string(rest)); err == nil {
				f.pid = pid
			}
			tail := f.buf[i+1:]
			f.buf = nil
			f.markDone()
			if len(tail) > 0 {
				f.next.Write(tail)
			}
			return len(b), nil
		}
		f.next.Write(f.buf[:i+1])
		f.buf = f.buf[i+1:]
	}
	if len(f.buf) > maxPIDSearch {
		f.next.Write(f.buf)
		f.buf = nil
		f.markDone()
	}
	return len(b), nil
}

func (f *pidFilter) markDone() {
	if !f.done {
		f.done = true
		close(f.known)
	}
}

// flush passes on what is held back, at the end of the stream.
func (f *pidFilter) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) > 0 {
		f.next.Write(f.buf)
		f.buf = nil
	}
	f.markDone()
}

// wait returns the pid once known, waiting at most d.
func (f *pidFilter) wait(d time.Duration) (int, bool) {
	select {
	case <-f.known:
	case <-time.After(d):
		return 0, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pid, f.pid > 1
}
