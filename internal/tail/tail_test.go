package tail

import (
	"bytes"
	"strings"
	"testing"
)

func TestBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		last   string
		kept   int // len(String())
	}{
		{"nothing", nil, "", 0},
		{"one line", []string{"error: no\n"}, "error: no", 10},
		{"blank lines after", []string{"warning: x\nerror: y\n", "\n  \n"}, "error: y", 24},
		{"line in pieces", []string{"err", "or: z"}, "error: z", 8},
		{"unfinished last line", []string{"a\n", "  b  "}, "b", 7},
		{"long output", []string{strings.Repeat("x\n", Size), "the end\n"}, "the end", Size},
		{"one huge line", []string{strings.Repeat("y", 3*Size)}, strings.Repeat("y", Size), Size},
	} {
		var echo bytes.Buffer
		b := &Buffer{Echo: &echo}
		for _, w := range tc.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("%s: Write(%d bytes) = %d, %v", tc.name, len(w), n, err)
			}
		}
		if got := b.Last(); got != tc.last {
			t.Errorf("%s: Last() = %.40q, want %.40q", tc.name, got, tc.last)
		}
		if got := len(b.String()); got != tc.kept {
			t.Errorf("%s: len(String()) = %d, want %d", tc.name, got, tc.kept)
		}
		if all := strings.Join(tc.writes, ""); echo.String() != all || !strings.HasSuffix(all, b.String()) {
			t.Errorf("%s: echoed %d bytes and kept %d, want all %d echoed and their end kept", tc.name, echo.Len(), len(b.String()), len(all))
		}
	}
}

func TestLastLineAndReason(t *testing.T) {
	long := strings.Repeat("é", ReasonSize) // two bytes each: a cut falls inside one
	for _, tc := range []struct {
		in, last, reason string
	}{
		{"", "", ""},
		{"\n \n", "", ""},
		{"one", "one", "one"},
		{"warning: x\r\n  error: y  \r\n\n", "error: y", "error: y"},
		{"a\n" + long + "\n", long, strings.Repeat("é", ReasonSize/2) + " ..."},
	} {
		if got := LastLine(tc.in); got != tc.last {
			t.Errorf("LastLine(%.40q) = %.40q, want %.40q", tc.in, got, tc.last)
		}
		if got := Reason(tc.in); got != tc.reason {
			t.Errorf("Reason(%.40q) = %.40q, want %.40q", tc.in, got, tc.reason)
		}
	}
}
