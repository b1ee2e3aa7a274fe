package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
)

var x86Files = []string{"bzImage", "initrd", "netboot.ipxe"}

// useNix replaces the setup's instance expression.
func (s *setup) useNix(t *testing.T, instance, expr string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.dir, instance+".nix"), []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
}

// nbship x86_64 on the rig: instantiated on op, built in the PXE host's
// store, published from there; nginx serves exactly the build's files.
func TestX86_64EndToEnd(t *testing.T) {
	const inst = "m2.xlarge.x86"
	s := newSetup(t, inst)
	ctx := mustCtx(t, 5*time.Minute)
	// As in a NixOS netboot output, the kernel and initrd are symlinks into
	// other store paths.
	src := filepath.Join(repoRoot(t), "testdata", "instances", inst+".nix")
	s.useNix(t, inst, fmt.Sprintf("import %s { salt = %q; links = true; }\n", src, s.salt))

	stdout, stderr, err := s.run(t, ctx, "x86_64", "--config", s.config, "--json")
	if err != nil {
		t.Fatalf("nbship x86_64: %v\n%s", err, stderr)
	}
	res := parseJSON[buildResult](t, stdout)
	if res.Instance != inst || res.Path != "local" || res.Files != 3 || res.FilesSent == 0 || res.Bytes == 0 {
		t.Errorf("summary = %+v, want %s, path local, 3 files copied in", res, inst)
	}
	if want := s.r.PXEDir + "/hydra-" + inst; res.Published != want {
		t.Errorf("published = %q, want %q", res.Published, want)
	}
	// Built on the PXE host, with its log streamed back.
	if !strings.Contains(stderr, "netboot@pxe: building '/nix/store/") {
		t.Errorf("no build log from the PXE host in stderr:\n%s", stderr)
	}
	if out, err := s.r.Run(ctx, rig.PXE, "nix-store", "--check-validity", res.Out); err != nil {
		t.Errorf("the output %s is not in the PXE host's store: %v %s", res.Out, err, out)
	}
	// Kept alive by a root nbship owns.
	root := filepath.Join(s.r.Dir, "pxe", "home", ".cache", "nbship", "gcroots", "result-"+inst)
	if target, err := os.Readlink(root); err != nil || target != res.Out {
		t.Errorf("GC root %s -> %q, %v; want it to point at %s", root, target, err, res.Out)
	}
	served := s.served(t, ctx, inst, x86Files...)
	for _, f := range x86Files {
		want := s.storeFile(t, ctx, rig.PXE, res.Out+"/"+f)
		if !bytes.Equal(served[f], want) {
			t.Errorf("%s served by nginx (%d bytes) differs from the build output (%d bytes)", f, len(served[f]), len(want))
		}
		// The slot holds files, not links into the store.
		if fi, err := os.Lstat(filepath.Join(s.r.PXEDir, "hydra-"+inst, f)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("%s in the slot: %v, %v; want a regular file", f, fi, err)
		}
	}
	if !bytes.Contains(served["netboot.ipxe"], []byte(s.salt)) {
		t.Errorf("served netboot.ipxe is not this test's build (no salt %q)", s.salt)
	}
	noNbshipLeft(t, s.r, rig.PXE)
	noStaging(t, s.r)

	// Again: nothing to build, nothing to copy; a new generation of the
	// same files, hard-linked.
	stdout, stderr, err = s.run(t, ctx, "x86_64", "--config", s.config)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, stderr)
	}
	if want := "published " + res.Published + " (local path)\n"; stdout != want {
		t.Errorf("stdout = %q, want %q", stdout, want)
	}
	if !strings.Contains(stderr, "published 3 files (0 copied, 3 already there)") {
		t.Errorf("second run copied files again:\n%s", stderr)
	}
	if strings.Contains(stderr, "building '/nix/store/") {
		t.Errorf("second run built again:\n%s", stderr)
	}
}

// An x86_64 build whose bzImage is an arm64 kernel is refused on the PXE
// host; the generation published before stays served, byte for byte.
func TestX86_64WrongKernelRefused(t *testing.T) {
	const inst = "m2.xlarge.x86"
	s := newSetup(t, inst)
	ctx := mustCtx(t, 5*time.Minute)
	if _, stderr, err := s.run(t, ctx, "x86_64", "--config", s.config); err != nil {
		t.Fatalf("first publish: %v\n%s", err, stderr)
	}
	before := s.served(t, ctx, inst, x86Files...)
	gens := generations(t, s.r, inst)

	s.useNix(t, inst, wrongKernelNix(s.salt, "x86_64-linux", "bzImage", debianArm64, debianAmd64))
	_, stderr, err := s.run(t, ctx, "x86_64", "--config", s.config)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 65 {
		t.Fatalf("x86_64 with an arm64 kernel: %v, want exit 65 (refused)\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	refusal := lines[max(0, len(lines)-2)]
	if !strings.HasPrefix(refusal, "nbship: netboot@pxe: image: /nix/store/") ||
		!strings.HasSuffix(refusal, "-netboot-wrong-kernel/bzImage is an aarch64 Image, but slot m2.xlarge.x86 needs an x86_64 bzImage") {
		t.Errorf("refusal line = %q, want the PXE host naming the build's bzImage and both architectures", refusal)
	}
	if hint := lines[len(lines)-1]; !strings.Contains(hint, "still serves "+gens[len(gens)-1]) {
		t.Errorf("hint = %q, want it to say what is still served", hint)
	}
	after := s.served(t, ctx, inst, x86Files...)
	for _, f := range x86Files {
		if !bytes.Equal(before[f], after[f]) {
			t.Errorf("%s served changed after a refused build", f)
		}
	}
	if got := generations(t, s.r, inst); strings.Join(got, " ") != strings.Join(gens, " ") {
		t.Errorf("generations = %v after the refusal, want %v", got, gens)
	}
	noNbshipLeft(t, s.r, rig.PXE)
	noStaging(t, s.r)
}
