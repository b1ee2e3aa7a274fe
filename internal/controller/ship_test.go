package controller

import (
	"bytes"
	"io"
	"testing"

	"github.com/nbship/nbship/internal/protocol"
)

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// An end's stderr reaches the operator without the protocol's lines: its
// --json summary and its Refusal line are kept for the controller, and a
// sender repeating the receiver's refusal is not heard a second time.
func TestCaptureWriter(t *testing.T) {
	receiverSaid := protocol.Refusal{Reason: "a: SHA-256 x does not match the announced y"}
	echo := protocol.Refusal{Peer: true, Reason: receiverSaid.Reason}
	for _, tc := range []struct {
		name   string
		writes []string
		passed string
		json   string
		said   *protocol.Refusal
	}{
		{"summary", []string{"send: 1 MB of 2 MB\n", `{"files":2}` + "\n"}, "send: 1 MB of 2 MB\n", `{"files":2}`, nil},
		{"receiver refuses", []string{receiverSaid.Line() + "\n", "nbship: recv: transfer: refused stream: a: SHA-256 x does not match the announced y\n"},
			"nbship: recv: transfer: refused stream: a: SHA-256 x does not match the announced y\n", "", &receiverSaid},
		{"sender repeats it", []string{"send: progress\n", echo.Line() + "\n", "nbship: send: transfer: the receiver refused the stream: whatever it said\n"},
			"send: progress\n", "", &echo},
		{"lines split across writes", []string{"nbship: se", "nd: x\n" + receiverSaid.Line()[:9], receiverSaid.Line()[9:] + "\n"},
			"nbship: send: x\n", "", &receiverSaid},
		{"a reason is one line", []string{protocol.Refusal{Reason: "two\nlines"}.Line() + "\n"}, "", "", &protocol.Refusal{Reason: "two\nlines"}},
	} {
		var out bytes.Buffer
		c := &captureWriter{w: nopCloser{&out}}
		for _, w := range tc.writes {
			c.Write([]byte(w))
		}
		if out.String() != tc.passed {
			t.Errorf("%s: passed on %q, want %q", tc.name, out.String(), tc.passed)
		}
		if got := string(c.json()); got != tc.json {
			t.Errorf("%s: summary %q, want %q", tc.name, got, tc.json)
		}
		if got := c.refusal(); (got == nil) != (tc.said == nil) || got != nil && *got != *tc.said {
			t.Errorf("%s: refusal %+v, want %+v", tc.name, got, tc.said)
		}
	}
}
