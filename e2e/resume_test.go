package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/testbin"
)

// bigImage makes the setup build an arm64 image whose initrd has extra
// random bytes appended (the format stays valid).
func (s *setup) bigImage(t *testing.T, instance string, extra int64) {
	t.Helper()
	s.appendedImage(t, instance, "big", "", fmt.Sprintf("/usr/bin/head -c %d /dev/urandom >> $out/initrd", extra))
}

// nativeRemote puts the amd64 nbship where both rig hosts can run it, for
// --remote-nbship: the builder claims aarch64 and would otherwise run the
// arm64 one under qemu-user, far too slow for gigabytes.
func nativeRemote(t *testing.T, r *rig.Rig) string {
	t.Helper()
	dir := filepath.Join(r.Dir, "resume-bin-"+strconv.Itoa(os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	in, err := os.Open(testbin.Nbship(t, "amd64"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(dir, "nbship")
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// stagedGrown waits until a staging directory of instance holds a file
// named name of at least n bytes.
func stagedGrown(t *testing.T, r *rig.Rig, instance, name string, n int64, st *started) {
	t.Helper()
	waitStaging(t, r, instance, st, fmt.Sprintf("%s with %d bytes", name, n), func(dir string) bool {
		fi, err := os.Stat(filepath.Join(dir, name))
		return err == nil && fi.Size() >= n
	})
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// A 2 GiB file cut at 90% by a dropped link: the retry continues it from
// what both ends found the same, and sends at most 15% of it again.
func TestResumeAfterDroppedLinkSendsOnlyTheRest(t *testing.T) {
	const inst, big = "c2.large.arm", int64(2 << 30)
	ctx := mustCtx(t, 8*time.Minute)
	s := newSetup(t, inst)
	s.resetSlot(t, ctx, inst)
	t.Cleanup(func() { s.resetSlot(t, context.Background(), inst) })
	s.bigImage(t, inst, big)
	bin := nativeRemote(t, s.r)
	res := cutAndRetry(t, ctx, s, 5*time.Minute, func(st *started) {
		stagedGrown(t, s.r, inst, "initrd", big*9/10, st)
	}, "--remote-nbship", bin)
	t.Cleanup(func() {
		s.r.Run(context.Background(), rig.Build, "nix-store", "--delete", "--ignore-liveness", res.Out)
	})
	// The retry's summary: what crossed the link the second time.
	limit := big * 15 / 100
	t.Logf("retry: path %s, %d bytes sent, %d resumed, %d compressed, %d on the wire (%.1f%% of 2 GiB)",
		res.Path, res.Bytes, res.Resumed, res.Compressed, res.WireBytes, 100*float64(res.WireBytes)/float64(big))
	if res.Bytes > limit || res.Compressed > limit || res.WireBytes > limit || res.WireBytes == 0 {
		t.Errorf("retry sent %d bytes (%d compressed, %d on the wire), want at most %d (15%% of 2 GiB)", res.Bytes, res.Compressed, res.WireBytes, limit)
	}
	if res.Resumed < big*8/10 {
		t.Errorf("retry resumed %d bytes, want most of the 90%% that had arrived", res.Resumed)
	}
	// Published exactly as built.
	out, err := s.r.Run(ctx, rig.Build, "sha256sum", res.Out+"/initrd")
	if err != nil {
		t.Fatalf("sha256sum on the builder: %v %s", err, out)
	}
	want, _, _ := strings.Cut(strings.TrimSpace(out), " ")
	if got := sha256File(t, filepath.Join(s.r.PXEDir, "hydra-"+inst, "initrd")); got != want {
		t.Errorf("published initrd SHA-256 %s, the build's %s", got, want)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)
}
