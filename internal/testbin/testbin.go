// Package testbin builds the nbship binary for tests that run it as a
// program: on loopback, or on the rig's hosts (linux/arm64 under qemu-user).
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	dir   string
	built = map[string]string{}
)

// Nbship builds ./cmd/nbship for linux/goarch once per test process and
// returns its path. Binaries for all architectures share one directory,
// named nbship-linux-GOARCH, so the controller finds the other
// architecture's binary beside itself.
func Nbship(t testing.TB, goarch string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if p, ok := built[goarch]; ok {
		return p
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "nbship-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	}
	out := filepath.Join(dir, "nbship-linux-"+goarch)
	cmd := exec.Command(goTool(), "build", "-trimpath", "-o", out, "github.com/nbship/nbship/cmd/nbship")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nbship for linux/%s: %v: %s", goarch, err, b)
	}
	built[goarch] = out
	return out
}

// Cleanup removes the binaries; call it from TestMain after the tests.
func Cleanup() {
	mu.Lock()
	defer mu.Unlock()
	if dir != "" {
		os.RemoveAll(dir)
	}
}

func goTool() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}
