package main

// recv --store, send --store and ship through the built binary, between
// two real Nix stores on this machine (Nix "chroot" stores: NIX_REMOTE=DIR
// keeps /nix/store paths under DIR). The same flows on the three-host rig
// are in e2e/ship_test.go.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/ends"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/tail"
	"github.com/nbship/nbship/internal/testbin"
	"github.com/nbship/nbship/nixstore"
)

// testStore is a Nix store of its own, used through nix-store.
type testStore struct {
	root string
	env  []string
}

func newTestStore(t *testing.T) *testStore {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		testbin.Missing(t, "nix-store not found; run scripts/deps.sh")
	}
	root := t.TempDir()
	env := append(os.Environ(), "NIX_REMOTE="+root,
		"NIX_CONFIG=build-users-group =\nsubstituters =\nsandbox = false\nfsync-metadata = false")
	return &testStore{root: root, env: env}
}

func (s *testStore) nixStore(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command("nix-store", args...)
	cmd.Env = s.env
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("nix-store %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// valid reports which of paths are valid in the store.
func (s *testStore) valid(t *testing.T, paths ...string) map[string]bool {
	t.Helper()
	invalid := map[string]bool{}
	for _, l := range strings.Fields(s.nixStore(t, nil, append([]string{"--check-validity", "--print-invalid"}, paths...)...)) {
		invalid[l] = true
	}
	v := map[string]bool{}
	for _, p := range paths {
		v[p] = !invalid[p]
	}
	return v
}

// storeName makes a store path name with a random hash part.
func storeName(label string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	b := make([]byte, 32)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b) + "-" + label
}

// closure is three store paths, leaf <- mid <- top, as the rig's test
// derivation makes them: executables, an empty file, a directory symlink,
// a path that contains (and so refers to) itself, and a big file.
type closure struct {
	leaf, mid, top string // full store paths
}

func (c closure) all() []string { return []string{c.leaf, c.mid, c.top} }

// addClosure puts a three-level closure into s through nix-store --import,
// with bigSize random bytes in leaf.
func addClosure(t *testing.T, s *testStore, bigSize int) closure {
	t.Helper()
	c := closure{
		leaf: nixstore.Dir + "/" + storeName("nbship-leaf"),
		mid:  nixstore.Dir + "/" + storeName("nbship-mid"),
		top:  nixstore.Dir + "/" + storeName("nbship-top"),
	}
	drv := storeName("nbship-top.drv")
	src := t.TempDir()
	leaf, mid, top := filepath.Join(src, "leaf"), filepath.Join(src, "mid"), filepath.Join(src, "top")
	writeFile(t, filepath.Join(leaf, "bin/hello"), []byte("#!/bin/sh\necho leaf\n"), 0o555)
	writeFile(t, filepath.Join(leaf, "data/empty"), nil, 0o444)
	writeFile(t, filepath.Join(leaf, "data/big"), randomBytes(t, bigSize), 0o444)
	writeFile(t, filepath.Join(leaf, "real/file"), []byte("in a directory reached by a symlink\n"), 0o444)
	if err := os.Symlink("real", filepath.Join(leaf, "dirlink")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(mid, "self"), []byte(c.mid+"\n"), 0o444)
	writeFile(t, filepath.Join(mid, "leaf-ref"), []byte(c.leaf+"\n"), 0o444)
	if err := os.Symlink(c.leaf+"/bin/hello", filepath.Join(mid, "hello")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, top, []byte("#!/bin/sh\nexec "+c.mid+"/hello\n"), 0o555)

	// The export stream goes straight from nix-store --dump of each tree
	// into nix-store --import: nothing big is held in memory.
	imp := exec.Command("nix-store", "--import")
	imp.Env = s.env
	w, err := imp.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	imp.Stdout, imp.Stderr = io.Discard, &errb
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		dir, path string
		refs      []string
		deriver   string
	}{
		{leaf, c.leaf, nil, ""},
		{mid, c.mid, []string{c.leaf, c.mid}, ""},
		{top, c.top, []string{c.mid}, drv},
	} {
		dump := exec.Command("nix-store", "--dump", p.dir)
		nar, err := dump.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := dump.Start(); err != nil {
			t.Fatal(err)
		}
		var refs []string
		for _, r := range p.refs {
			refs = append(refs, filepath.Base(r))
		}
		if err := nixstore.WriteExport(w, filepath.Base(p.path), nar, refs, p.deriver); err != nil {
			t.Fatalf("exporting %s: %v", p.dir, err)
		}
		if err := dump.Wait(); err != nil {
			t.Fatalf("nix-store --dump %s: %v", p.dir, err)
		}
	}
	w.Write(make([]byte, 8)) // the final 0
	w.Close()
	if err := imp.Wait(); err != nil {
		t.Fatalf("nix-store --import: %v: %s", err, errb.String())
	}
	return c
}

// startEnv starts bin with env (nil: this process's) and args.
func startEnv(t *testing.T, env []string, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(out), stderr: &testbin.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return p
}

// rssPeaks are the peak resident sets (KiB) of a process alone and of the
// biggest of its children.
type rssPeaks struct{ self, child int64 }

// peakRSS samples the peak resident set (VmHWM) of pid, and of pid alone
// (not its children, as a wait4 rusage would count), and the largest of its
// children's, until stop is closed; the result arrives on the channel.
func peakRSS(pid int, stop <-chan struct{}) <-chan rssPeaks {
	res := make(chan rssPeaks, 1)
	go func() {
		var peak rssPeaks
		for {
			peak.self = max(peak.self, ends.PeakRSS(pid))
			for _, c := range childPIDs(pid) {
				peak.child = max(peak.child, ends.PeakRSS(c))
			}
			select {
			case <-stop:
				res <- peak
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return res
}

// storeLoopback runs recv --store on dst and send --store on src over
// loopback, the sender's paths on its stdin after the pin (as a script may
// give them; the ship controller gives them ahead: storeLoopbackEarly).
// recvArgs are added to the receiver's arguments,
// recvEnv to its environment. It returns both ends' outcomes and peak RSS.
func storeLoopback(t *testing.T, bin string, src, dst *testStore, recvArgs, recvEnv []string, paths ...string) (recv, sender outcome, recvPeak, sendPeak rssPeaks) {
	t.Helper()
	return storeLoopbackArgs(t, bin, src, dst, nil, recvArgs, recvEnv, paths...)
}

// storeLoopbackArgs is storeLoopback with sendArgs added to the sender's
// arguments.
func storeLoopbackArgs(t *testing.T, bin string, src, dst *testStore, sendArgs, recvArgs, recvEnv []string, paths ...string) (recv, sender outcome, recvPeak, sendPeak rssPeaks) {
	t.Helper()
	return storeLoopbackEarly(t, bin, src, dst, sendArgs, recvArgs, recvEnv, nil, paths...)
}

// storeLoopbackEarly is storeLoopbackArgs; with early, the paths go to the
// sender ahead of the pin, as the ship controller gives them now, and early
// is called (with the sender) before the pins are given.
func storeLoopbackEarly(t *testing.T, bin string, src, dst *testStore, sendArgs, recvArgs, recvEnv []string, early func(*proc), paths ...string) (recv, sender outcome, recvPeak, sendPeak rssPeaks) {
	t.Helper()
	r := startEnv(t, append(slices.Clone(dst.env), recvEnv...), bin, append([]string{"recv", "--listen", "127.0.0.1:0", "--store", "--peer-pin", "-", "--json", "--stdin-lifeline"}, recvArgs...)...)
	rfp := r.line(t)
	addr, ok := strings.CutPrefix(r.line(t), "listening ")
	if !ok {
		t.Fatalf("recv's second line is not listening ADDR (stderr: %s)", r.stderr)
	}
	s := startEnv(t, src.env, bin, append([]string{"send", "--store", "--connect", addr, "--peer-pin", "-", "--json", "--stdin-lifeline"}, sendArgs...)...)
	stop := make(chan struct{})
	rpeak, speak := peakRSS(r.cmd.Process.Pid, stop), peakRSS(s.cmd.Process.Pid, stop)
	sfp := s.line(t)
	if early != nil {
		s.stdin.Write([]byte(strings.Join(paths, "\n") + "\n\n"))
		early(s)
	}
	r.stdin.Write([]byte(sfp + "\n"))
	if early != nil {
		s.stdin.Write([]byte(rfp + "\n"))
	} else {
		s.stdin.Write([]byte(rfp + "\n" + strings.Join(paths, "\n") + "\n\n"))
	}
	// The stdin of both stays open (the lifeline) until they are done.
	so, serr := s.wait(t)
	s.stdin.Close()
	ro, rerr := r.wait(t)
	r.stdin.Close()
	close(stop)
	return outcome{ro, r.stderr.String(), rerr}, outcome{so, s.stderr.String(), serr}, <-rpeak, <-speak
}

func senderSummary(t *testing.T, stdout string) protocol.Stream {
	t.Helper()
	connected, js, _ := strings.Cut(stdout, "\n")
	if !strings.HasPrefix(connected, "connected ") {
		t.Fatalf("sender's stdout = %q, want connected then the summary", stdout)
	}
	var s protocol.Stream
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		t.Fatalf("send --json output %q: %v", js, err)
	}
	return s
}

// sameClosure checks that dst has top's closure exactly as src has it:
// the same paths, each valid, verified by Nix, with the same NAR.
func sameClosure(t *testing.T, src, dst *testStore, top string) {
	t.Helper()
	want := strings.Fields(src.nixStore(t, nil, "-qR", top))
	got := strings.Fields(dst.nixStore(t, nil, "-qR", top))
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("closure on the receiver = %v, want %v", got, want)
	}
	for _, p := range want {
		dst.nixStore(t, nil, "--verify-path", p)
		if a, b := src.nixStore(t, nil, "-q", "--hash", p), dst.nixStore(t, nil, "-q", "--hash", p); a != b {
			t.Errorf("%s: NAR hash %s on the receiver, %s on the sender", p, b, a)
		}
		if a, b := src.nixStore(t, nil, "-q", "--deriver", p), dst.nixStore(t, nil, "-q", "--deriver", p); a != b {
			t.Errorf("%s: deriver %s on the receiver, %s on the sender", p, b, a)
		}
	}
}

func TestStoreLoopback(t *testing.T) {
	src, dst := newTestStore(t), newTestStore(t)
	c := addClosure(t, src, 3<<20)
	bin := nbshipBinary(t, "amd64")

	recv, sender, _, _ := storeLoopback(t, bin, src, dst, nil, nil, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	sameClosure(t, src, dst, c.top)
	s := senderSummary(t, sender.stdout)
	if s.Files != 3 || s.FilesSent != 3 || s.Bytes < 3<<20 {
		t.Errorf("sender summary = %+v, want 3 paths sent, over 3 MiB", s)
	}

	// Again: nothing but metadata moves.
	recv, sender, _, _ = storeLoopback(t, bin, src, dst, nil, nil, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("again: recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	if s := senderSummary(t, sender.stdout); s.FilesSent != 0 || s.Reused != 3 || s.Bytes != 0 || s.WireBytes > 32<<10 {
		t.Errorf("again: sender summary = %+v, want 0 sent, 3 skipped, a few KiB on the wire", s)
	}
}

// The paths may come ahead of the pin, as the ship controller gives them:
// the sender asks its store for the closure (its nix-store --serve runs)
// before the pin has come, and the closure arrives as with the pin first.
func TestStoreLoopbackPathsBeforePin(t *testing.T) {
	src, dst := newTestStore(t), newTestStore(t)
	c := addClosure(t, src, 1<<20)
	bin := nbshipBinary(t, "amd64")

	asked := false
	recv, sender, _, _ := storeLoopbackEarly(t, bin, src, dst, nil, nil, nil, func(s *proc) {
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end) && !asked; time.Sleep(10 * time.Millisecond) {
			asked = slices.Contains(childNames(s.cmd.Process.Pid), "nix-store")
		}
	}, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	if !asked {
		t.Errorf("the sender started no nix-store before it had the pin; want the store asked while the pin travels")
	}
	sameClosure(t, src, dst, c.top)
}

// childPIDs are pid's children now (a child belongs to the thread that
// started it).
func childPIDs(pid int) []int {
	var pids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, c := range strings.Fields(string(b)) {
			var cpid int
			if _, err := fmt.Sscan(c, &cpid); err == nil {
				pids = append(pids, cpid)
			}
		}
	}
	return pids
}

// childNames are the command names of pid's children.
func childNames(pid int) []string {
	var names []string
	for _, c := range childPIDs(pid) {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); err == nil {
			names = append(names, strings.TrimSpace(string(comm)))
		}
	}
	return names
}

// TestStoreLoopbackSigned signs a closure on the way with a key Nix made:
// the receiving store has each path with the signature, and Nix itself
// finds it good for that key. A key file that is not one stops the sender
// before anything moves.
func TestStoreLoopbackSigned(t *testing.T) {
	src, dst := newTestStore(t), newTestStore(t)
	c := addClosure(t, src, 1<<20)
	bin := nbshipBinary(t, "amd64")
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	src.nixStore(t, nil, "--generate-binary-cache-key", "nbship-test-1", sk, pk)
	pub, err := os.ReadFile(pk)
	if err != nil {
		t.Fatal(err)
	}

	recv, sender, _, _ := storeLoopbackArgs(t, bin, src, dst, []string{"--sign-key", sk}, nil, nil, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	sameClosure(t, src, dst, c.top)
	nix := func(s *testStore, args ...string) (string, error) {
		cmd := exec.Command("nix", append([]string{"--extra-experimental-features", "nix-command"}, args...)...)
		cmd.Env = s.env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := nix(dst, "store", "verify", "--no-contents", "--recursive", "--sigs-needed", "1",
		"--option", "trusted-public-keys", strings.TrimSpace(string(pub)), c.top)
	if err != nil {
		t.Errorf("nix store verify --sigs-needed 1 on the receiver: %v: %s", err, out)
	}
	// The sender's store is left as it was: no signature there.
	if out, err := nix(src, "path-info", "--sigs", c.top); err != nil || strings.Contains(out, "nbship-test-1") {
		t.Errorf("nix path-info --sigs on the sender = %q, %v; want no signature added there", out, err)
	}

	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("nbship-test-1:not-a-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "send", "--store", "--connect", "127.0.0.1:1", "--peer-pin", "-", "--sign-key", bad, c.top)
	cmd.Env = src.env
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err == nil || o.Len() != 0 || !strings.Contains(e.String(), bad+": not a Nix secret key") {
		t.Errorf("send --sign-key BADFILE: %v, stdout %q, stderr %q; want it stopped before its fingerprint, naming the file", err, o.String(), e.String())
	}
}

func TestStoreLoopbackFlippedByte(t *testing.T) {
	src := newTestStore(t)
	c := addClosure(t, src, 1<<20)
	flip := "NBSHIP_TEST_FLIP_NAR=" + filepath.Base(c.mid)

	// Built with the test hooks, the receiver corrupts mid's NAR on arrival.
	dst := newTestStore(t)
	hooked := testbin.NbshipTags(t, "amd64", testbin.TestHooks)
	tmp := t.TempDir() // the receiver's spool goes here, and must not stay
	recv, sender, _, _ := storeLoopback(t, hooked, src, dst, nil, []string{flip, "TMPDIR=" + tmp}, c.top)
	if recv.err == nil || sender.err == nil {
		t.Fatalf("a corrupted NAR was accepted: recv %v, sender %v", recv.err, sender.err)
	}
	last := tail.LastLine(recv.stderr)
	if !strings.Contains(last, c.mid) || !strings.Contains(last, "SHA-256") {
		t.Errorf("recv's error = %q, want it to name %s and the hash mismatch", last, c.mid)
	}
	if !strings.Contains(sender.stderr, c.mid) {
		t.Errorf("sender's error does not name %s:\n%s", c.mid, sender.stderr)
	}
	if v := dst.valid(t, c.all()...); !v[c.leaf] || v[c.mid] || v[c.top] {
		t.Errorf("valid on the receiver: %v; want leaf (before the bad path) only", v)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("the failed receiver left %v in its TMPDIR", ents)
	}

	// A release build ignores the variable: the same ship succeeds.
	dst = newTestStore(t)
	plain := nbshipBinary(t, "amd64")
	recv, sender, _, _ = storeLoopback(t, plain, src, dst, nil, []string{flip}, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("release build with %s: recv: %v %s\nsend: %v %s", flip, recv.err, recv.stderr, sender.err, sender.stderr)
	}
	sameClosure(t, src, dst, c.top)
	b, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("NBSHIP_TEST_FLIP_NAR")) {
		t.Errorf("the release binary %s contains the test hook's variable name", plain)
	}
}

// A path far larger than any buffer crosses with both ends' memory
// bounded: peak RSS well under the NAR's size.
func TestStoreLoopbackMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 256 MiB")
	}
	src, dst := newTestStore(t), newTestStore(t)
	const big = 256 << 20
	c := addClosure(t, src, big)
	bin := nbshipBinary(t, "amd64")
	recv, sender, rpeak, speak := storeLoopback(t, bin, src, dst, nil, nil, c.top)
	if recv.err != nil || sender.err != nil {
		t.Fatalf("recv: %v %s\nsend: %v %s", recv.err, recv.stderr, sender.err, sender.stderr)
	}
	dst.nixStore(t, nil, "--verify-path", c.leaf)
	t.Logf("peak RSS: recv %d MiB (its nix-store %d MiB), sender %d MiB (its nix-store %d MiB), for a %d MiB NAR",
		rpeak.self>>10, rpeak.child>>10, speak.self>>10, speak.child>>10, big>>20)
	if rpeak.child == 0 || speak.child == 0 {
		t.Errorf("no nix-store seen under recv or sender (peaks %+v, %+v)", rpeak, speak)
	}
	for _, u := range []struct {
		end string
		kib int64
	}{{"recv", rpeak.self}, {"send", speak.self}, {"recv's nix-store", rpeak.child}, {"sender's nix-store", speak.child}} {
		if u.kib<<10 > big/2 {
			t.Errorf("%s peaked at %d MiB for a %d MiB NAR; want its memory bounded", u.end, u.kib>>10, big>>20)
		}
	}
}

// inStore runs bin with args where /nix is the test store's, as --dest
// needs: it reads the paths' files under /nix/store.
func (s *testStore) inStore(t *testing.T, bin string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		testbin.Missing(t, "needs root for a mount namespace with the test store at /nix")
	}
	if _, err := os.Stat("/nix"); err != nil {
		testbin.Missing(t, "no /nix to mount the test store on (Debian's nix-bin makes it)")
	}
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount --bind "$0" /nix && exec "$@"`, filepath.Join(s.root, "nix"), bin}, args...)...)
	cmd.Env = s.env
	return cmd
}

func TestShipLocalToDirectory(t *testing.T) {
	src := newTestStore(t)
	c := addClosure(t, src, 1<<20)
	bin := nbshipBinary(t, "amd64")
	for _, path := range []string{"direct", "ssh"} {
		t.Run(path, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "out")
			cmd := src.inStore(t, bin, "ship", "--from", "local", "--to", "local", "--dest", dest, "--path", path, "--listen-port", "0", "--json", "-")
			cmd.Stdin = strings.NewReader(c.leaf + "\n" + c.mid + "\n")
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				t.Fatalf("nbship ship: %v\n%s", err, errb.String())
			}
			var s protocol.Ship
			if err := json.Unmarshal(out.Bytes(), &s); err != nil {
				t.Fatalf("ship --json = %q: %v", out.String(), err)
			}
			if s.PathsTotal != 2 || s.PathsSent != 2 || s.Path != path || s.Files < 5 {
				t.Errorf("summary = %+v, want 2 paths, %s path", s, path)
			}
			leaf := filepath.Join(dest, filepath.Base(c.leaf))
			for name, want := range map[string]struct {
				mode os.FileMode
				data string
			}{
				"bin/hello":    {0o555, "#!/bin/sh\necho leaf\n"},
				"data/empty":   {0o444, ""},
				"dirlink/file": {0o444, "in a directory reached by a symlink\n"},
			} {
				p := filepath.Join(leaf, name)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				b, _ := os.ReadFile(p)
				if fi.Mode().Perm() != want.mode || string(b) != want.data {
					t.Errorf("%s = %v %q, want %v %q", name, fi.Mode().Perm(), b, want.mode, want.data)
				}
			}
			if fi, err := os.Lstat(filepath.Join(leaf, "dirlink")); err != nil || !fi.IsDir() {
				t.Errorf("dirlink = %v, %v; want a directory (symlinks are followed)", fi, err)
			}
			self, err := os.ReadFile(filepath.Join(dest, filepath.Base(c.mid), "self"))
			if err != nil || string(self) != c.mid+"\n" {
				t.Errorf("mid/self = %q, %v", self, err)
			}
		})
	}
}

func TestShipRefusesBadInput(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		want  string
	}{
		{"bad line", []string{"--store"}, "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf\n\nhello\n", "standard input line 3: \"hello\" is not a store path"},
		{"path inside a store path", []string{"--store", "-"}, "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf/bin/sh\n", "standard input line 1"},
		{"bad hash", []string{"--store"}, "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf\n/nix/store/ec2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf\n", "standard input line 2"},
		{"bad argument", []string{"--store", "./result"}, "", `"./result" is not a store path`},
		{"no paths", []string{"--store"}, "\n\n", "no store paths"},
		{"no mode", nil, "", "exactly one of --store or --dest"},
		{"both modes", []string{"--store", "--dest", "/tmp/x"}, "", "exactly one of --store or --dest"},
		{"symlinks with store", []string{"--store", "--follow-any-symlink"}, "", "--follow-any-symlink goes with --dest"},
		{"sign key with --dest", []string{"--dest", "/tmp/x", "--sign-key", "/tmp/k"}, "", "--sign-key and --substitute-on-destination go with --store"},
		{"substitute with --dest", []string{"--dest", "/tmp/x", "-s"}, "", "--sign-key and --substitute-on-destination go with --store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"ship", "--from", "local", "--to", "local"}, tc.args...)...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(errb.String(), tc.want) {
				t.Errorf("ship %v <<< %q: %v, stderr %q; want exit 2 and %q", tc.args, tc.stdin, err, errb.String(), tc.want)
			}
		})
	}
}

func TestShipReceiverWithoutNix(t *testing.T) {
	bin := nbshipBinary(t, "amd64")
	cmd := exec.Command(bin, "ship", "--from", "local", "--to", "local", "--store", "/nix/store/0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf")
	cmd.Env = []string{"PATH=/nonexistent", "HOME=" + t.TempDir()}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err == nil {
		t.Fatalf("ship to a host without nix-store succeeded:\n%s", errb.String())
	}
	if !strings.Contains(errb.String(), "local has no nix-store on its PATH") {
		t.Errorf("stderr = %q, want it to say local has no nix-store", errb.String())
	}
	if strings.Contains(errb.String(), "fingerprint") || out.Len() != 0 {
		t.Errorf("ends were started: stdout %q, stderr %q", out.String(), errb.String())
	}
}

// With a known port both ends start at once; when the receiver then
// refuses (here: a destination that is not empty), the operator reads its
// one line and nothing from the sender that was stopped because of it.
func TestShipReceiverRefusalIsTheOneLine(t *testing.T) {
	src := newTestStore(t)
	c := addClosure(t, src, 1<<10)
	bin := nbshipBinary(t, "amd64")
	dest := t.TempDir()
	writeFile(t, filepath.Join(dest, "keep"), []byte("already here"), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := src.inStore(t, bin, "ship", "--from", "local", "--to", "local", "--dest", dest, "--path", "direct",
		"--listen-port", strconv.Itoa(port), "-")
	cmd.Stdin = strings.NewReader(c.leaf + "\n")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err == nil {
		t.Fatalf("ship into a non-empty directory succeeded:\n%s", errb.String())
	}
	msg := errb.String()
	if !strings.Contains(msg, "not empty") {
		t.Errorf("stderr %q: want the receiver's refusal of the non-empty destination", msg)
	}
	for _, l := range strings.Split(strings.TrimSpace(msg), "\n") {
		if strings.Contains(l, "nbship: send:") || strings.Contains(l, "reading --peer-pin") {
			t.Errorf("stderr line %q: the stopped sender's complaint reached the operator:\n%s", l, msg)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "keep")); string(b) != "already here" {
		t.Errorf("the destination's file is now %q", b)
	}
}
