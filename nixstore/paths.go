package nixstore

// Lists of store paths, as a user or the controller gives them: on
// standard input, one a line, or as arguments.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxPathLine bounds one line of store paths.
const maxPathLine = 4096

// ReadPaths reads store paths, one per line, from r: to EOF, or with
// stopAtEmpty to the first empty line (what follows is not read, beyond
// r's own buffering). Blank lines are skipped otherwise; duplicates are
// dropped. A line that is not a store path is an error naming its number.
func ReadPaths(r io.Reader, what string, stopAtEmpty bool) ([]string, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	var paths []string
	seen := map[string]bool{}
	for n := 1; ; n++ {
		line, err := br.ReadString('\n')
		if len(line) > maxPathLine {
			return nil, fmt.Errorf("%s line %d is longer than %d bytes; it is not a store path", what, n, maxPathLine)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading %s: %w", what, err)
		}
		if p := strings.TrimSpace(line); p != "" {
			if _, perr := Base(p); perr != nil {
				return nil, fmt.Errorf("%s line %d: %q is not a store path (%s/HASH-NAME): %v", what, n, p, Dir, perr)
			}
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		} else if stopAtEmpty && err == nil {
			return paths, nil
		}
		if err != nil {
			return paths, nil
		}
	}
}

// CheckPaths checks store paths given as arguments, and drops duplicates.
func CheckPaths(args []string) ([]string, error) {
	var paths []string
	seen := map[string]bool{}
	for _, a := range args {
		if _, err := Base(a); err != nil {
			return nil, fmt.Errorf("%q is not a store path (%s/HASH-NAME): %v", a, Dir, err)
		}
		if !seen[a] {
			seen[a] = true
			paths = append(paths, a)
		}
	}
	return paths, nil
}
