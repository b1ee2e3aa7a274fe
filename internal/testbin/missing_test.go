package testbin

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Missing skips where a developer lacks a tool and fails in CI: run in a
// child test process both ways. (Its output is not logged: a skip line in
// this package's output would itself fail scripts/test.sh in CI.)
func TestMissing(t *testing.T) {
	if os.Getenv("TESTBIN_MISSING_CHILD") == "1" {
		Missing(t, "needs %s", "a thing")
		t.Error("Missing returned")
		return
	}
	for _, tc := range []struct {
		require string
		fails   bool
		word    string
	}{{"", false, "SKIP"}, {"1", true, "FAIL"}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissing$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTBIN_MISSING_CHILD=1", RequireEnv+"="+tc.require)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fails || !strings.Contains(string(out), "--- "+tc.word) || !strings.Contains(string(out), "needs a thing") {
			t.Errorf("%s=%q: exit %v, want a %s that says what is missing", RequireEnv, tc.require, err, tc.word)
		}
	}
}
