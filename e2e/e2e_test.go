// Package e2e runs nbship's flows on the three-host rig (rig/rig.sh): an
// operator, an aarch64 build host (qemu-user) and a PXE host with nginx, in
// network namespaces with their own sshd and Nix stores.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/testbin"
)

func TestMain(m *testing.M) {
	rig.Main(m, testbin.Cleanup)
}

// repoRoot is the module's root (tests run in e2e/).
func repoRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// setup is a rig with nbship built for both architectures and a working
// directory holding a builders.conf whose nixFile is a salted instance, so
// each test builds an image of its own.
type setup struct {
	r      *rig.Rig
	bin    string
	dir    string
	config string
	salt   string
}

func newSetup(t *testing.T, instance string, extraConfig ...string) *setup {
	t.Helper()
	r := rig.Require(t)
	testbin.Nbship(t, "arm64")
	bin := testbin.Nbship(t, "amd64")
	dir := t.TempDir()
	salt := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	nix := filepath.Join(dir, instance+".nix")
	src := filepath.Join(repoRoot(t), "testdata", "instances", instance+".nix")
	if err := os.WriteFile(nix, []byte(fmt.Sprintf("import %s { salt = %q; }\n", src, salt)), 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile(r.Config)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(base) + "nixFile " + nix + "\ninstance " + instance + "\n" + strings.Join(extraConfig, "\n") + "\n"
	cfg := filepath.Join(dir, "builders.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return &setup{r: r, bin: bin, dir: dir, config: cfg, salt: salt}
}

// run runs nbship on the operator host.
func (s *setup) run(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := s.r.Command(ctx, rig.Op, s.bin, args...)
	cmd.Dir = s.dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// buildResult is what aarch64 and x86_64 print with --json.
type buildResult = protocol.Build

// parseJSON decodes a command's --json output into a T.
func parseJSON[T any](t *testing.T, stdout string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(stdout), &v); err != nil {
		t.Fatalf("--json output %q: %v", stdout, err)
	}
	return v
}

// served fetches the slot's files from nginx as a booting machine would.
func (s *setup) served(t *testing.T, ctx context.Context, instance string, files ...string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	for _, f := range files {
		url := s.r.HTTPURL + "hydra-" + instance + "/" + f
		status, body, err := s.r.HTTPGet(ctx, url)
		if err != nil || status != 200 {
			t.Fatalf("GET %s = %d, %v", url, status, err)
		}
		got[f] = body
	}
	return got
}

// storeFile reads a file of a store path on the build host.
func (s *setup) storeFile(t *testing.T, ctx context.Context, host, p string) []byte {
	t.Helper()
	cmd := s.r.Command(ctx, host, "cat", p)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("cat %s on %s: %v: %s", p, host, err, e.String())
	}
	return o.Bytes()
}

// noNbshipLeft waits until no nbship process runs on any of hosts.
func noNbshipLeft(t *testing.T, r *rig.Rig, hosts ...string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var left []string
		for _, h := range hosts {
			pids, err := r.Processes(h, "nbship")
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pids {
				cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
				left = append(left, fmt.Sprintf("%s: %d %s", h, p, bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbship processes left behind: %v", left)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// noStaging checks that the PXE directory holds no half-received data.
func noStaging(t *testing.T, r *rig.Rig) {
	t.Helper()
	var bad []string
	filepath.Walk(r.PXEDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		b := filepath.Base(p)
		if strings.HasPrefix(b, ".staging-") || strings.Contains(b, ".nbship-recv-") || strings.Contains(b, ".tmp-") {
			bad = append(bad, p)
		}
		return nil
	})
	if len(bad) > 0 {
		t.Errorf("temporary data left in pxeDir: %v", bad)
	}
}

// resetSlot removes a slot and its generations on the PXE host.
func (s *setup) resetSlot(t *testing.T, ctx context.Context, instance string) {
	t.Helper()
	if out, err := s.r.Run(ctx, rig.PXE, "rm", "-rf", s.r.PXEDir+"/hydra-"+instance, s.r.PXEDir+"/.nbship/generations/"+instance); err != nil {
		t.Fatalf("resetting slot %s: %v %s", instance, err, out)
	}
}

func mustCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
