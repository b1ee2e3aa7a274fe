package nixstore

import (
	"bufio"
	"io"
	"slices"
	"strings"
	"testing"
)

var (
	pathA = Dir + "/" + strings.Repeat("a", 32) + "-a"
	pathB = Dir + "/" + strings.Repeat("b", 32) + "-b"
)

var readPathsTests = []struct {
	in          string
	stopAtEmpty bool
	want        []string
	rest        string
	err         string
}{
	{pathA + "\n" + pathB + "\n", false, []string{pathA, pathB}, "", ""},
	{pathA + "\n\n" + pathB, false, []string{pathA, pathB}, "", ""},
	{pathA + "\n\n" + pathB, true, []string{pathA}, pathB, ""},
	{" " + pathA + " \n" + pathA + "\n", false, []string{pathA}, "", ""},
	{pathA, true, []string{pathA}, "", ""},
	{"", true, nil, "", ""},
	{pathA + "\n/tmp/x\n", false, nil, "", "line 2"},
	{pathA + "/sub\n", false, nil, "", "not a store path"},
	{strings.Repeat("x", 5000) + "\n", false, nil, "", "longer than"},
}

func TestReadPaths(t *testing.T) {
	for _, tc := range readPathsTests {
		br := bufio.NewReader(strings.NewReader(tc.in))
		got, err := ReadPaths(br, "standard input", tc.stopAtEmpty)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ReadPaths(%.40q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ReadPaths(%.40q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if rest, _ := io.ReadAll(br); string(rest) != tc.rest {
			t.Errorf("ReadPaths(%.40q) left %q, want %q", tc.in, rest, tc.rest)
		}
	}
}

func TestCheckPaths(t *testing.T) {
	if got, err := CheckPaths([]string{pathA, pathB, pathA}); err != nil || !slices.Equal(got, []string{pathA, pathB}) {
		t.Errorf("CheckPaths = %q, %v; want both once", got, err)
	}
	if _, err := CheckPaths([]string{pathA, "/nix/store/x"}); err == nil || !strings.Contains(err.Error(), `"/nix/store/x"`) {
		t.Errorf("CheckPaths of a bad path: %v, want an error naming it", err)
	}
}

// ReadPaths reads the sender's standard input, which the controller
// writes from what a user piped in: whatever it is given, every path it
// returns is a store path, once.
func FuzzReadPaths(f *testing.F) {
	for _, tc := range readPathsTests {
		f.Add(tc.in, tc.stopAtEmpty)
	}
	f.Fuzz(func(t *testing.T, in string, stopAtEmpty bool) {
		got, err := ReadPaths(strings.NewReader(in), "standard input", stopAtEmpty)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range got {
			if _, err := Base(p); err != nil || seen[p] {
				t.Fatalf("ReadPaths(%q) returned %q (%v, seen %v)", in, p, err, seen[p])
			}
			seen[p] = true
		}
	})
}
