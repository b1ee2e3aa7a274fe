package e2e

// ship --store to a PXE host whose store requires signatures and does not
// trust the receiving user (netboot): its nix-daemon checks every path
// against trusted-public-keys. The test makes a binary cache of its own,
// signed with a key it generates, and gives it to the PXE host as its
// substituter (--substitute-on-destination).

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
)

type substResult struct {
	shipResult
	PathsSubstituted int   `json:"paths_substituted"`
	SubstitutedBytes int64 `json:"substituted_bytes"`
}

// untrustingPXE gives the PXE host's store require-sigs, the key named by
// pub as its only trusted key, substituter as its only substituter, and no
// trust in netboot; the rig's default comes back at the end of the test.
func untrustingPXE(t *testing.T, r *rig.Rig, pub, substituter string) {
	t.Helper()
	if err := r.NixConf(rig.PXE, untrusting(pub, substituter)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.NixConf(rig.PXE, ""); err != nil {
			t.Errorf("restoring pxe's nix.conf: %v", err)
		}
	})
}

// untrusting is the nix.conf lines of untrustingPXE.
func untrusting(pub, substituter string) string {
	return fmt.Sprintf("trusted-users = root\nrequire-sigs = true\ntrusted-public-keys = %s\nsubstituters = %s\nconnect-timeout = 5\n", pub, substituter)
}

func TestShipStoreSigned(t *testing.T) {
	s, ctx := newShipRig(t, 8*time.Minute, false)
	// A key pair made by Nix on the build host (/tmp is the machine's on
	// every rig host); the secret key stays there.
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	s.on(t, ctx, rig.Build, "nix-store", "--generate-binary-cache-key", "nbship-rig-test-1", sk, pk)
	pub := strings.TrimSpace(s.on(t, ctx, rig.Build, "cat", pk))
	// The cache: leaf only (50 MiB), signed by that key.
	cache := filepath.Join(dir, "cache")
	s.on(t, ctx, rig.Build, "nix", "copy", "--to", "file://"+cache+"?secret-key="+sk, s.leaf)
	untrustingPXE(t, s.r, pub, "file://"+cache)
	qR := s.on(t, ctx, rig.Build, "nix-store", "-qR", s.top)

	// Unsigned: refused before any data moves, naming a path and the key
	// the store would accept; nothing imported.
	stdout, stderr, err := s.ship(t, ctx, qR, nil, "--store", "--json")
	if err == nil {
		t.Fatalf("ship of unsigned paths to an untrusting store succeeded:\n%s\n%s", stdout, stderr)
	}
	t.Logf("the refusal:\n%s", stderr)
	if !strings.Contains(stderr, "has no signature") || !strings.Contains(stderr, "nbship-rig-test-1") ||
		!strings.Contains(stderr, s.leaf) && !strings.Contains(stderr, s.mid) && !strings.Contains(stderr, s.top) {
		t.Errorf("refusal of unsigned paths:\n%s\nwant it to name a path, say it has no signature and name the key nbship-rig-test-1", stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "has no signature") || strings.Contains(stderr, "protocol error") {
		t.Errorf("the last line of stderr is %q, want the receiver's refusal (and no protocol error anywhere)", last)
	}
	if strings.Contains(stderr, "nbship: send:") {
		t.Errorf("the sender's echo of the refusal reached the operator:\n%s", stderr)
	}
	if v := s.valid(t, ctx, rig.PXE, s.leaf, s.mid, s.top); v[s.leaf] || v[s.mid] || v[s.top] {
		t.Errorf("after the refusal, valid on pxe: %v; want nothing", v)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noTempNARs(t)

	// Half in the cache, the rest signed on the way: leaf comes from the
	// cache, mid and top cross the channel, and the untrusting store takes
	// them for their signatures.
	stdout, stderr, err = s.ship(t, ctx, qR, nil, "--store", "--json", "-s", "--sign-key", sk)
	if err != nil {
		t.Fatalf("ship -s --sign-key: %v\n%s", err, stderr)
	}
	res := parseJSON[substResult](t, stdout)
	if res.PathsTotal != 3 || res.PathsSent != 2 || res.PathsSubstituted != 1 || res.PathsSkipped != 0 || res.SubstitutedBytes < 50<<20 {
		t.Errorf("summary = %+v, want 2 sent, 1 (over 50 MiB) substituted", res)
	}
	if res.WireBytes > 1<<20 {
		t.Errorf("%d bytes on the wire, want under 1 MiB: leaf's 50 MiB came from the cache", res.WireBytes)
	}
	if !strings.Contains(stderr, "1 of the 3 store paths it lacked") || !strings.Contains(stderr, "came from this host's substituters") {
		t.Errorf("no line about the paths from pxe's substituters on stderr:\n%s", stderr)
	}
	for _, p := range []string{s.leaf, s.mid, s.top} {
		s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", p)
		if sigs := s.on(t, ctx, rig.PXE, "nix", "path-info", "--sigs", p); !strings.Contains(sigs, "nbship-rig-test-1:") {
			t.Errorf("%s on pxe: nix path-info --sigs = %q, want the key's signature", p, sigs)
		}
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)

	// Signed in the sending store (nix store sign there), the cache down:
	// every path crosses, and nothing comes from the cache.
	leaf, mid, top := s.buildClosure(t, ctx, fmt.Sprintf("%s-2-%d", t.Name(), time.Now().UnixNano()))
	s.on(t, ctx, rig.Build, "nix", "store", "sign", "--key-file", sk, "--recursive", top)
	// Down: nothing listens on that port of pxe's loopback.
	if err := s.r.NixConf(rig.PXE, untrusting(pub, "http://127.0.0.1:9")); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = s.ship(t, ctx, "", nil, "--store", "--json", "-s", top)
	if err != nil {
		t.Fatalf("ship -s with the cache down: %v\n%s", err, stderr)
	}
	t.Logf("with the cache down:\n%s", stderr)
	res = parseJSON[substResult](t, stdout)
	if res.PathsTotal != 3 || res.PathsSent != 3 || res.PathsSubstituted != 0 || res.Bytes < 50<<20 {
		t.Errorf("with the cache down, summary = %+v, want all 3 sent, none substituted", res)
	}
	for _, p := range []string{leaf, mid, top} {
		s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", p)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noTempNARs(t)
}
