package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/testbin"
)

// bigPathNix is one store path of size random bytes; the salt makes it
// new.
const bigPathNix = `{ salt, size }:
derivation {
  name = "nbship-ship-big";
  inherit salt;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "/usr/bin/head -c ${size} /dev/urandom > $out" ];
}
`

// keptNAR is how many bytes a receiver keeps of a NAR under /tmp (the
// receiving user's TMPDIR on pxe), the most of any.
func keptNAR() int64 {
	var most int64
	dirs, _ := filepath.Glob("/tmp/nbship-nar-*")
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, `.nbship\partial`)); err == nil {
			most = max(most, fi.Size())
		}
	}
	return most
}

// A 1 GiB store path cut at 90% by a dropped link: nbship ship's retry
// continues its NAR from what both ends found the same, sends at most 15%
// of it again, and the path is valid on pxe with the builder's NAR hash.
func TestShipResumesACutNAR(t *testing.T) {
	const big = int64(1 << 30)
	r := rig.Require(t)
	ctx := mustCtx(t, 4*time.Minute)
	bin := testbin.Nbship(t, "amd64")
	remote := nativeRemote(t, r)
	expr := filepath.Join(t.TempDir(), "big.nix")
	if err := os.WriteFile(expr, []byte(bigPathNix), 0o644); err != nil {
		t.Fatal(err)
	}
	salt := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	out, err := r.Run(ctx, rig.Build, "nix-build", "--no-out-link", "--argstr", "salt", salt, "--argstr", "size", strconv.FormatInt(big, 10), expr)
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
	t.Cleanup(func() {
		r.Run(context.Background(), rig.PXE, "nix-store", "--delete", "--ignore-liveness", p)
		r.Run(context.Background(), rig.Build, "nix-store", "--delete", "--ignore-liveness", p)
	})
	narSize, err := r.Run(ctx, rig.Build, "nix-store", "-q", "--size", p)
	if err != nil {
		t.Fatal(err)
	}
	size, _ := strconv.ParseInt(strings.TrimSpace(narSize), 10, 64)

	st := &started{done: make(chan error, 1)}
	st.cmd = r.Command(ctx, rig.Op, bin, "ship", "--config", r.Config, "--store", "--json", "--retries", "1", "--remote-nbship", remote, p)
	st.cmd.Stdout, st.cmd.Stderr = &st.stdout, &st.stderr
	if err := st.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { st.done <- st.cmd.Wait() }()
	t.Cleanup(func() { st.cmd.Process.Kill() })
	for deadline := time.Now().Add(2 * time.Minute); keptNAR() < size*9/10; time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-st.done:
			t.Fatalf("ship ended (%v) before 90%% of the NAR was kept on pxe:\n%s", err, st.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kept NAR never reached 90%% (%d of %d bytes):\n%s", keptNAR(), size, st.stderr.String())
		}
	}
	if err := r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Link("build-pxe", true) })
	if err := st.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("ship with one retry: %v\n%s", err, st.stderr.String())
	}
	if stderr := st.stderr.String(); !strings.Contains(stderr, "attempt 1 of 2 failed") {
		t.Errorf("stderr does not report the failed first attempt:\n%s", stderr)
	}
	res := parseJSON[shipResult](t, st.stdout.String())
	t.Logf("retry: path %s, %d bytes sent, %d resumed, %d compressed, %d on the wire (%.1f%% of the NAR)",
		res.Path, res.Bytes, res.Resumed, res.Compressed, res.WireBytes, 100*float64(res.WireBytes)/float64(size))
	limit := size * 15 / 100
	if res.PathsSent != 1 || res.Bytes > limit || res.Compressed > limit || res.WireBytes > limit {
		t.Errorf("retry sent %d paths, %d bytes (%d compressed, %d on the wire), want 1 path and at most %d (15%% of the NAR)", res.PathsSent, res.Bytes, res.Compressed, res.WireBytes, limit)
	}
	if res.Resumed < size*8/10 {
		t.Errorf("retry resumed %d bytes, want most of the 90%% that had arrived:\n%s", res.Resumed, st.stderr.String())
	}
	// Valid on pxe, with the builder's NAR hash, and Nix agrees with it.
	want, err := r.Run(ctx, rig.Build, "nix-store", "-q", "--hash", p)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Run(ctx, rig.PXE, "nix-store", "-q", "--hash", p)
	if err != nil || got != want {
		t.Errorf("NAR hash on pxe %q (%v), on the builder %q", got, err, want)
	}
	if out, err := r.Run(ctx, rig.PXE, "nix-store", "--verify-path", p); err != nil {
		t.Errorf("nix-store --verify-path on pxe: %v %s", err, out)
	}
	noNbshipLeft(t, r, rig.Build, rig.PXE)
	noTempNARs(t)
}
