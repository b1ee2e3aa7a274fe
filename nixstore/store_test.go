package nixstore

import (
	"errors"
	"fmt"
	"testing"
)

func TestNotFound(t *testing.T) {
	for _, tc := range []struct {
		status int
		stderr string
		want   bool
	}{
		{127, "", true},
		{1, "sh: 1: nix-store: not found\n", true},
		{1, "bash: line 1: nix-store: command not found\n", true},
		{1, "error: path '/nix/store/x' is not valid\n", false},
		{0, "", false},
	} {
		if got := NotFound(tc.status, tc.stderr); got != tc.want {
			t.Errorf("NotFound(%d, %q) = %v, want %v", tc.status, tc.stderr, got, tc.want)
		}
	}
	err := fmt.Errorf("ship: %w", &NotFoundError{Host: "pxe"})
	if want := "ship: pxe has no nix-store on its PATH; install Nix there (Debian: apt-get install nix-bin)"; err.Error() != want || !errors.Is(err, ErrNotFound) {
		t.Errorf("NotFoundError = %q (Is ErrNotFound: %v), want %q and true", err, errors.Is(err, ErrNotFound), want)
	}
}
