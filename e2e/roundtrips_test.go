package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/tunnel"
)

// setupRTT is the round-trip time of TestSetupRoundTrips' long link: long
// enough that the round trips, not the busy machine's CPU, make most of
// the time.
const setupRTT = 200 * time.Millisecond

// The most round trips of setupRTT each flow may take, everything
// counted: SSH to both hosts, the agents, the steps on the hosts, the
// ends, the pins, TLS, a stream of a few bytes, the summary. At 200 ms on
// this loaded 2-core machine (docs/design.md, "Round trips of set-up"):
// ship 20.8 round trips (24.9 before the set-up was cut), the re-publish
// 22.9 (34.5 before). The limits leave room for the CPU: each Nix command
// and process start costs some.
const (
	maxShipRTTs      = 24
	maxRepublishRTTs = 28
)

// TestSetupRoundTrips holds the fixed cost of a run on a long link to a
// number of round trips: nbship ship --store of one small store path, and
// nbship aarch64 --drv of an image that is already published (nothing to
// send but the manifest). A step that waits for another needlessly, or
// one more command per step, shows as several round trips more.
func TestSetupRoundTrips(t *testing.T) {
	s, ctx := newShipRig(t, 10*time.Minute, false)
	b := newSetup(t, "c2.large.arm")
	// The nbship the hosts run: this machine's (as the bench does), not the
	// arm64 one under qemu-user, whose starts would cost more than a
	// round trip each. The netboot user must be able to run it.
	dir, err := os.MkdirTemp("", "nbship-rtt-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	remoteBin := filepath.Join(dir, "nbship")
	data, err := os.ReadFile(s.bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(remoteBin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	// Undelayed: the small path on the build host, and the image built
	// and published once.
	tiny := filepath.Join(t.TempDir(), "tiny.nix")
	if err := os.WriteFile(tiny, []byte(`{ salt }: derivation { name = "nbship-rtt"; inherit salt; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo $salt > $out" ]; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(s.on(t, ctx, rig.Build, "nix-build", "--no-out-link", "--argstr", "salt", b.salt, tiny))
	stdout, stderr, err := b.run(t, ctx, "aarch64", "--config", b.config, "--remote-nbship", remoteBin, "--json")
	if err != nil {
		t.Fatalf("nbship aarch64: %v\n%s", err, stderr)
	}
	drv := parseJSON[buildResult](t, stdout).Drv

	if err := s.r.Delay(setupRTT, "0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.r.Undelay(); err != nil {
			t.Errorf("Undelay: %v", err)
		}
	})

	stdout, stderr, err = s.ship(t, ctx, path+"\n", nil, "--store", "--remote-nbship", remoteBin, "--json")
	if err != nil {
		t.Fatalf("nbship ship --store: %v\n%s", err, stderr)
	}
	sh := parseJSON[shipResult](t, stdout)
	if sh.PathsSent != 1 {
		t.Fatalf("nbship ship --store sent %d paths, want 1\n%s", sh.PathsSent, stderr)
	}
	if v := s.valid(t, ctx, rig.PXE, path); !v[path] {
		t.Fatalf("%s is not valid on the PXE host after the ship", path)
	}
	rtts := func(secs float64) float64 { return secs / setupRTT.Seconds() }
	t.Logf("nbship ship --store of one path: %.2f s = %.1f round trips (the stream %.2f s)", sh.TotalSeconds, rtts(sh.TotalSeconds), sh.Seconds)
	if n := rtts(sh.TotalSeconds); n > maxShipRTTs {
		t.Errorf("nbship ship --store of one path took %.1f round trips of %v, want at most %d", n, setupRTT, maxShipRTTs)
	}
	if sh.Path != "direct" || sh.Lanes != tunnel.DefaultLanes {
		t.Errorf("nbship ship --store over the long link went %s over %d lanes, want direct over %d", sh.Path, sh.Lanes, tunnel.DefaultLanes)
	}

	stdout, stderr, err = b.run(t, ctx, "aarch64", "--config", b.config, "--drv", drv, "--remote-nbship", remoteBin, "--json")
	if err != nil {
		t.Fatalf("nbship aarch64 --drv: %v\n%s", err, stderr)
	}
	re := parseJSON[buildResult](t, stdout)
	if re.FilesSent != 0 {
		t.Fatalf("re-publishing the unchanged image sent %d files, want 0\n%s", re.FilesSent, stderr)
	}
	t.Logf("nbship aarch64 --drv, already published: %.2f s = %.1f round trips (the stream %.2f s)", re.TotalSeconds, rtts(re.TotalSeconds), re.Seconds)
	if n := rtts(re.TotalSeconds); n > maxRepublishRTTs {
		t.Errorf("nbship aarch64 --drv of a published image took %.1f round trips of %v, want at most %d", n, setupRTT, maxRepublishRTTs)
	}
	if re.Lanes != tunnel.DefaultLanes {
		t.Errorf("nbship aarch64 --drv over the long link ran over %d lanes, want %d", re.Lanes, tunnel.DefaultLanes)
	}

	// 50 MB that do not compress, over the long link: more than one
	// connection's window carries, so the chunks spill over to the other
	// lanes (tunnel's tests show that they do) and are put back in order
	// on the PXE host.
	dest := s.r.Dir + "/pxe/home/lanes-" + filepath.Base(s.leaf)
	stdout, stderr, err = s.ship(t, ctx, s.leaf+"\n", nil, "--dest", dest, "--remote-nbship", remoteBin, "--json")
	if err != nil {
		t.Fatalf("nbship ship --dest over the long link: %v\n%s", err, stderr)
	}
	if res := parseJSON[shipResult](t, stdout); res.Path != "direct" || res.Lanes != tunnel.DefaultLanes {
		t.Errorf("nbship ship --dest over the long link = %+v, want direct over %d lanes", res, tunnel.DefaultLanes)
	} else {
		t.Logf("50 MB over %d lanes at %v: the stream %.2f s", res.Lanes, setupRTT, res.Seconds)
	}
	sum := func(host, p string) string { return strings.Fields(s.on(t, ctx, host, "sha256sum", p))[0] }
	if a, b := sum(rig.Build, s.leaf+"/data/big"), sum(rig.PXE, dest+"/"+filepath.Base(s.leaf)+"/data/big"); a != b {
		t.Errorf("data/big over the lanes: sha256 %s on pxe, %s on the build host", b, a)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}
