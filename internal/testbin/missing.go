package testbin

import (
	"fmt"
	"os"
	"testing"
)

// RequireEnv is the variable CI sets (.ci/run): with it at 1, every
// prerequisite of every test must be installed.
const RequireEnv = "NBSHIP_REQUIRE_RIG"

// Missing ends t because something it needs is not on this machine: a skip
// that says what and how to get it, or with NBSHIP_REQUIRE_RIG=1 a failure.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1: nothing may be missing)", msg, RequireEnv)
	}
	t.Skip(msg)
}
