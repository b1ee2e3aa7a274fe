package e2e

// nbship ship on the rig: store paths built by real Nix on the build host
// move into the PXE host's real store (nix-store --serve --write through
// its nix-daemon, as the netboot user), or into a directory there.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/tail"
	"github.com/nbship/nbship/internal/testbin"
)

// closureNix is a three-level closure: top -> mid -> leaf. leaf has an
// executable, an empty file, a directory symlink and 50 MB of random
// bytes; mid refers to itself and to leaf; top is a single executable
// file. The builder is /bin/sh with absolute tools (PATH is unset in
// builds); the salt makes every test's paths new.
const closureNix = `{ salt }:
let
  mk = name: deps: script: derivation ({
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  } // deps);
  leaf = mk "nbship-ship-leaf" {} ''
    set -e
    /bin/mkdir -p "$out/bin" "$out/data" "$out/real"
    /usr/bin/printf '#!/bin/sh\necho leaf %s\n' "$salt" > "$out/bin/hello"
    /bin/chmod 0555 "$out/bin/hello"
    : > "$out/data/empty"
    /usr/bin/head -c 52428800 /dev/urandom > "$out/data/big"
    echo in-a-linked-directory > "$out/real/file"
    /bin/ln -s real "$out/dirlink"
  '';
  mid = mk "nbship-ship-mid" { inherit leaf; } ''
    set -e
    /bin/mkdir -p "$out"
    echo "$out" > "$out/self"
    echo "$leaf" > "$out/leaf-ref"
    /bin/ln -s "$leaf/bin/hello" "$out/hello"
  '';
in mk "nbship-ship-top" { inherit mid; } ''
  set -e
  /usr/bin/printf '#!/bin/sh\nexec %s/hello\n' "$mid" > "$out"
  /bin/chmod 0555 "$out"
''
`

// shipRig is the rig with nbship built for both architectures (with the
// test hooks when asked) and a fresh closure on the build host.
type shipRig struct {
	r              *rig.Rig
	bin            string
	leaf, mid, top string
}

// newShipRig brings the rig up (waiting for it if another test process has
// it) and only then starts the test's clock: ctx ends after limit.
func newShipRig(t *testing.T, limit time.Duration, hooks bool) (*shipRig, context.Context) {
	t.Helper()
	r := rig.Require(t)
	ctx := mustCtx(t, limit)
	start := time.Now()
	t.Cleanup(func() { t.Logf("%v with the rig up", time.Since(start).Round(time.Second)) })
	tags := ""
	if hooks {
		tags = testbin.TestHooks
	}
	testbin.NbshipTags(t, "arm64", tags)
	s := &shipRig{r: r, bin: testbin.NbshipTags(t, "amd64", tags)}
	s.leaf, s.mid, s.top = s.buildClosure(t, ctx, fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()))
	return s, ctx
}

// buildClosure builds closureNix with salt on the build host and returns
// its three paths.
func (s *shipRig) buildClosure(t *testing.T, ctx context.Context, salt string) (leaf, mid, top string) {
	t.Helper()
	dir := t.TempDir()
	expr := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(expr, []byte(closureNix), 0o644); err != nil {
		t.Fatal(err)
	}
	out := s.on(t, ctx, rig.Build, "nix-build", "--no-out-link", "--argstr", "salt", salt, expr)
	top = strings.TrimSpace(out)
	refs := strings.Fields(s.on(t, ctx, rig.Build, "nix-store", "-q", "--references", top))
	if len(refs) != 1 {
		t.Fatalf("top %s refers to %v, want mid only", top, refs)
	}
	mid = refs[0]
	for _, p := range strings.Fields(s.on(t, ctx, rig.Build, "nix-store", "-q", "--references", mid)) {
		if p != mid {
			leaf = p
		}
	}
	if leaf == "" {
		t.Fatalf("mid %s refers to no leaf", mid)
	}
	return leaf, mid, top
}

// on runs a command as root on a rig host and returns its stdout.
func (s *shipRig) on(t *testing.T, ctx context.Context, host, name string, args ...string) string {
	t.Helper()
	cmd := s.r.Command(ctx, host, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s on %s: %v: %s", name, strings.Join(args, " "), host, err, e.String())
	}
	return o.String()
}

// ship runs nbship ship on the operator's host with stdin and the rig's
// config; env, if any, goes first (as env(1) arguments).
func (s *shipRig) ship(t *testing.T, ctx context.Context, stdin string, env []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	argv := append(append(append([]string{}, env...), s.bin, "ship", "--config", s.r.Config), args...)
	cmd := s.r.Command(ctx, rig.Op, "env", argv...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// shipResult is what ship prints with --json.
type shipResult = protocol.Ship

// closureOf is the sorted closure of p on host.
func (s *shipRig) closureOf(t *testing.T, ctx context.Context, host, p string) []string {
	t.Helper()
	c := strings.Fields(s.on(t, ctx, host, "nix-store", "-qR", p))
	slices.Sort(c)
	return c
}

// valid reports which of paths are valid in host's store.
func (s *shipRig) valid(t *testing.T, ctx context.Context, host string, paths ...string) map[string]bool {
	t.Helper()
	invalid := strings.Fields(s.on(t, ctx, host, "nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...))
	v := map[string]bool{}
	for _, p := range paths {
		v[p] = !slices.Contains(invalid, p)
	}
	return v
}

// noTempNARs checks that no receiver left a file of its own in /tmp: the
// spool between the network and nix-store has no name, and nbship keeps no
// NAR anywhere else.
func noTempNARs(t *testing.T) {
	t.Helper()
	for _, pat := range []string{"/tmp/nbship-spool-*", "/tmp/nbship-nar-*"} {
		if m, _ := filepath.Glob(pat); len(m) > 0 {
			t.Errorf("a receiver left temporary files: %v", m)
		}
	}
}

func TestShipStoreClosure(t *testing.T) {
	s, ctx := newShipRig(t, 3*time.Minute, false)
	qR := s.on(t, ctx, rig.Build, "nix-store", "-qR", s.top)

	// What scripts do: nix-store -qR $out | nbship ship ... --store.
	stdout, stderr, err := s.ship(t, ctx, qR, nil, "--store", "--json")
	if err != nil {
		t.Fatalf("nbship ship --store: %v\n%s", err, stderr)
	}
	res := parseJSON[shipResult](t, stdout)
	if res.PathsTotal != 3 || res.PathsSent != 3 || res.PathsSkipped != 0 || res.Path != "direct" || res.Bytes < 50<<20 {
		t.Errorf("summary = %+v, want 3 of 3 paths sent directly, over 50 MiB", res)
	}
	if !strings.Contains(stderr, "paths") {
		t.Errorf("no progress or summary about paths on stderr:\n%s", stderr)
	}
	want := s.closureOf(t, ctx, rig.Build, s.top)
	if got := s.closureOf(t, ctx, rig.PXE, s.top); !slices.Equal(got, want) {
		t.Errorf("closure on pxe = %v, want the build host's %v", got, want)
	}
	for _, p := range want {
		s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", p)
		for _, q := range []string{"--hash", "--deriver", "--references"} {
			if a, b := s.on(t, ctx, rig.Build, "nix-store", "-q", q, p), s.on(t, ctx, rig.PXE, "nix-store", "-q", q, p); a != b {
				t.Errorf("nix-store -q %s %s: %q on pxe, %q on the build host", q, p, b, a)
			}
		}
	}
	if got := s.on(t, ctx, rig.PXE, "sh", "-c", `"$1"`, "sh", s.top); !strings.HasPrefix(got, "leaf ") {
		t.Errorf("running the shipped top on pxe printed %q", got)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noTempNARs(t)

	// Again: nothing to send but the manifest.
	stdout, stderr, err = s.ship(t, ctx, qR, nil, "--store", "--json")
	if err != nil {
		t.Fatalf("second ship: %v\n%s", err, stderr)
	}
	if res := parseJSON[shipResult](t, stdout); res.PathsSent != 0 || res.PathsSkipped != 3 || res.Bytes != 0 || res.WireBytes > 32<<10 {
		t.Errorf("re-ship = %+v, want 0 sent, 3 skipped, only metadata on the wire", res)
	}

	// --dest: the paths' files in a directory on pxe, one entry per path,
	// symlinks followed. Explicit hosts and ports this time.
	dest := s.r.Dir + "/pxe/home/ship-" + filepath.Base(s.leaf)
	stdout, stderr, err = s.ship(t, ctx, s.leaf+"\n"+s.top+"\n", nil, "--from", "root@builder", "--to", "netboot@pxe",
		"--dest", dest, "--connect", s.r.PXEDirectAddr+":61617", "--listen-port", "61617", "--json")
	if err != nil {
		t.Fatalf("ship --dest: %v\n%s", err, stderr)
	}
	if res := parseJSON[shipResult](t, stdout); res.PathsTotal != 2 || res.Path != "direct" || res.Files < 5 || res.Lanes != 1 {
		t.Errorf("--dest summary = %+v, want 2 paths, 5 or more files, direct over one connection (a short link)", res)
	}
	leaf := dest + "/" + filepath.Base(s.leaf)
	got := s.on(t, ctx, rig.PXE, "stat", "-c", "%F %a %s %n", leaf+"/bin/hello", leaf+"/data/empty", leaf+"/data/big", leaf+"/dirlink", leaf+"/dirlink/file", dest+"/"+filepath.Base(s.top))
	for _, w := range []string{
		"regular file 555 ", "regular empty file 444 0 " + leaf + "/data/empty", "regular file 444 52428800 " + leaf + "/data/big",
		"directory ", "regular file 444 22 " + leaf + "/dirlink/file", "regular file 555 ",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("on pxe, stat of the landed files:\n%s\nlacks %q", got, w)
		}
	}
	sum := func(host, p string) string { return strings.Fields(s.on(t, ctx, host, "sha256sum", p))[0] }
	if a, b := sum(rig.Build, s.leaf+"/data/big"), sum(rig.PXE, leaf+"/data/big"); a != b {
		t.Errorf("data/big: sha256 %s on pxe, %s on the build host", b, a)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}

func TestShipStoreHalfPresent(t *testing.T) {
	s, ctx := newShipRig(t, 3*time.Minute, false)
	// mid and leaf first (over SSH, for the fallback path too), as an
	// argument: the closure is computed on the build host.
	stdout, stderr, err := s.ship(t, ctx, "", nil, "--store", "--json", "--path", "ssh", s.mid)
	if err != nil {
		t.Fatalf("ship mid: %v\n%s", err, stderr)
	}
	if res := parseJSON[shipResult](t, stdout); res.PathsSent != 2 || res.Path != "ssh" {
		t.Errorf("shipping mid = %+v, want its 2 paths sent over ssh", res)
	}
	if v := s.valid(t, ctx, rig.PXE, s.leaf, s.mid, s.top); !v[s.leaf] || !v[s.mid] || v[s.top] {
		t.Fatalf("valid on pxe after shipping mid: %v", v)
	}
	topSize := strings.TrimSpace(s.on(t, ctx, rig.Build, "nix-store", "-q", "--size", s.top))
	stdout, stderr, err = s.ship(t, ctx, s.on(t, ctx, rig.Build, "nix-store", "-qR", s.top), nil, "--store", "--json")
	if err != nil {
		t.Fatalf("ship top: %v\n%s", err, stderr)
	}
	res := parseJSON[shipResult](t, stdout)
	if res.PathsTotal != 3 || res.PathsSent != 1 || res.PathsSkipped != 2 || fmt.Sprint(res.Bytes) != topSize {
		t.Errorf("shipping top with the rest there = %+v, want 1 sent (top's %s NAR bytes), 2 skipped", res, topSize)
	}
	s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", s.top)
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}

func TestShipStoreFlippedByte(t *testing.T) {
	s, ctx := newShipRig(t, 3*time.Minute, true)
	flip := "NBSHIP_TEST_FLIP_NAR=" + filepath.Base(s.mid)
	stdout, stderr, err := s.ship(t, ctx, s.top+"\n", []string{flip}, "--store", "--json")
	if err == nil {
		t.Fatalf("a corrupted NAR was imported: %s\n%s", stdout, stderr)
	}
	if last := tail.LastLine(stderr); !strings.Contains(last, s.mid) {
		t.Errorf("last line = %q, want it to name %s", last, s.mid)
	}
	if !strings.Contains(stderr, "SHA-256") {
		t.Errorf("stderr does not say the hash did not match:\n%s", stderr)
	}
	if v := s.valid(t, ctx, rig.PXE, s.leaf, s.mid, s.top); !v[s.leaf] || v[s.mid] || v[s.top] {
		t.Errorf("valid on pxe: %v; want leaf only (mid was corrupted, top depends on it)", v)
	}
	s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", s.leaf)
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noTempNARs(t)
}

func TestShipReceiverWithoutNixStore(t *testing.T) {
	r := rig.Require(t)
	ctx := mustCtx(t, 2*time.Minute)
	s := &shipRig{r: r, bin: testbin.Nbship(t, "amd64")}
	testbin.Nbship(t, "arm64")
	// The receiving end is the operator's machine with no nix-store on
	// its PATH (it has Nix, but this run cannot find it).
	_, stderr, err := s.ship(t, ctx, "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf\n", []string{"PATH=/nonexistent"}, "--to", "local", "--store")
	if err == nil {
		t.Fatalf("ship to a receiver without nix-store succeeded:\n%s", stderr)
	}
	if last := tail.LastLine(stderr); !strings.Contains(last, "local has no nix-store on its PATH") {
		t.Errorf("last line = %q, want it to say the receiver has no nix-store", last)
	}
	for _, step := range []string{"fingerprint", "connected", "shipping", "send:"} {
		if strings.Contains(stderr, step) {
			t.Errorf("ship went on (%q) after finding no nix-store:\n%s", step, stderr)
		}
	}
	noNbshipLeft(t, r, rig.Build, rig.PXE)
}

func TestShipInvalidStorePathOnStdin(t *testing.T) {
	r := rig.Require(t)
	ctx := mustCtx(t, time.Minute)
	s := &shipRig{r: r, bin: testbin.Nbship(t, "amd64")}
	stdin := "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf\n/nix/store/1dlqm4z1xv5yc0m2mbhy0gblp2wbwra8-mid\n./result\n"
	_, stderr, err := s.ship(t, ctx, stdin, nil, "--store")
	if err == nil {
		t.Fatalf("ship accepted %q", stdin)
	}
	if last := tail.LastLine(stderr); !strings.Contains(last, `standard input line 3: "./result" is not a store path`) {
		t.Errorf("last line = %q, want it to name line 3 and what is wrong", last)
	}
	if strings.Contains(stderr, "ssh:") || strings.Contains(stderr, "shipping") {
		t.Errorf("ship reached the hosts before refusing its input:\n%s", stderr)
	}
}

// Ctrl-C in the middle of an import: exit status 130, no nbship and no
// nix-store left on either host, nothing in /tmp, top (which never
// arrived) not valid on pxe, and whatever was imported whole.
func TestShipStoreInterrupted(t *testing.T) {
	s, ctx := newShipRig(t, 3*time.Minute, false)
	if err := s.r.Shape("100mbit"); err != nil { // 50 MB: about 4 s in flight
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Shape("off") })
	st := &started{done: make(chan error, 1)}
	st.cmd = s.r.Command(ctx, rig.Op, s.bin, "ship", "--config", s.r.Config, "--store", "--json", s.top)
	st.cmd.Stdout, st.cmd.Stderr = &st.stdout, &st.stderr
	if err := st.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { st.done <- st.cmd.Wait() }()
	t.Cleanup(func() { st.cmd.Process.Kill() })

	// Mid-stream: Nix is restoring leaf's big file on pxe.
	big := filepath.Join(s.r.Dir, "pxe", s.leaf, "data", "big")
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if fi, err := os.Stat(big); err == nil && fi.Size() > 4<<20 {
			break
		}
		select {
		case err := <-st.done:
			t.Fatalf("ship ended (%v) before the import was seen under way at %s:\n%s", err, big, st.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("never saw %s grow:\n%s", big, st.stderr.String())
		}
	}
	st.cmd.Process.Signal(os.Interrupt)
	err := st.wait(t, time.Minute)
	if code := st.cmd.ProcessState.ExitCode(); err == nil || code != 130 {
		t.Errorf("interrupted ship exited %d (%v), want 130:\n%s", code, err, st.stderr.String())
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		pids, err := s.r.Processes(rig.PXE, "nix-store")
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nix-store processes left on pxe: %v", pids)
		}
	}
	v := s.valid(t, ctx, rig.PXE, s.leaf, s.mid, s.top)
	if v[s.top] || v[s.mid] {
		t.Errorf("valid on pxe after the interrupt: %v; mid and top never arrived whole", v)
	}
	if v[s.leaf] {
		s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", s.leaf)
	}
	noTempNARs(t)

	// The next ship completes the closure, whatever the interrupt left.
	stdout, stderr, err := s.ship(t, ctx, s.top+"\n", nil, "--store", "--json")
	if err != nil {
		t.Fatalf("ship after the interrupt: %v\n%s", err, stderr)
	}
	if res := parseJSON[shipResult](t, stdout); res.PathsTotal != 3 || res.PathsSent+res.PathsSkipped != 3 {
		t.Errorf("ship after the interrupt = %+v", res)
	}
	for _, p := range []string{s.leaf, s.mid, s.top} {
		s.on(t, ctx, rig.PXE, "nix-store", "--verify-path", p)
	}
}
