// Package testbin builds the nbship binary for tests that run it as a
// program: on loopback, or on the rig's hosts (linux/arm64 under qemu-user).
package testbin

import (
	"bytes"
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
	return NbshipTags(t, goarch, "")
}

// TestHooks is the build tag of the test hooks (transfer/testhooks_on.go).
const TestHooks = "nbship_testhooks"

// NbshipTags is Nbship built with -tags tags (e.g. TestHooks). Each set of
// tags gets a directory of its own, with the same names in it, so that a
// controller built with tags uploads binaries built with the same tags.
func NbshipTags(t testing.TB, goarch, tags string) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	key := goarch + "/" + tags
	if p, ok := built[key]; ok {
		return p
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "nbship-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		dir = d
	}
	outDir := dir
	args := []string{"build", "-trimpath"}
	if tags != "" {
		outDir = filepath.Join(dir, "tags-"+tags)
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-tags", tags)
	}
	out := filepath.Join(outDir, "nbship-linux-"+goarch)
	cmd := exec.Command(goTool(), append(args, "-o", out, "github.com/nbship/nbship/cmd/nbship")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nbship for linux/%s (tags %q): %v: %s", goarch, tags, err, b)
	}
	built[key] = out
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

// Buffer is a bytes.Buffer that a program's output goroutine may write
// while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
