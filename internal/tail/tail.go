// Package tail keeps the end of a command's output, for the error that
// says why the command failed.
package tail

import (
	"io"
	"strings"
	"sync"
)

// Size is how many of the last bytes written a Buffer keeps.
const Size = 4096

// Buffer keeps the last Size bytes written to it. It is safe for
// concurrent use.
type Buffer struct {
	// Echo, if set, is given every write too; its errors are ignored (the
	// tail is kept whatever becomes of it).
	Echo io.Writer

	mu sync.Mutex
	b  []byte
}

func (t *Buffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Echo != nil {
		t.Echo.Write(p)
	}
	t.b = append(t.b, p...)
	if over := len(t.b) - Size; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// String returns the bytes kept.
func (t *Buffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// Last returns the last non-empty line kept, without surrounding space
// (the last line may be one still being written).
func (t *Buffer) Last() string {
	return LastLine(t.String())
}

// LastLine returns the last non-empty line of s, without surrounding
// space.
func LastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

// ReasonSize is how many bytes of a line Reason keeps.
const ReasonSize = 300

// Reason is the last non-empty line of s, cut to ReasonSize bytes (and
// " ..."): a command's own words for why it failed, short enough for an
// error message.
func Reason(s string) string {
	s = LastLine(s)
	if len(s) > ReasonSize {
		s = strings.ToValidUTF8(s[:ReasonSize], "") + " ..."
	}
	return s
}
