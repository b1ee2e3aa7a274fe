package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/testbin"
)

// freshImage makes the setup build an arm64 image whose Image and initrd
// differ from every other test's (bytes appended to both; the magics and
// formats stay valid), so nothing can be reused from the slot and the
// whole image crosses the channel.
func (s *setup) freshImage(t *testing.T, instance string) {
	t.Helper()
	s.appendedImage(t, instance, "fresh", "/usr/bin/head -c 4194304 /dev/urandom >> $out/Image", fmt.Sprintf("echo %q >> $out/initrd", s.salt))
}

// appendedImage makes the setup build the instance's image with the shell
// lines imageTail and initrdTail run after its Image and initrd are copied
// (to append to them).
func (s *setup) appendedImage(t *testing.T, instance, name, imageTail, initrdTail string) {
	t.Helper()
	src := filepath.Join(repoRoot(t), "testdata", "instances", instance+".nix")
	nix := filepath.Join(s.dir, instance+".nix")
	expr := fmt.Sprintf(`let base = import %s { salt = %q; }; in
derivation {
  name = "netboot-%s-%s";
  system = base.system;
  builder = "/bin/sh";
  args = [ "-c" ''
    /bin/mkdir $out
    /bin/cp ${base}/netboot.ipxe $out/netboot.ipxe
    /bin/cat ${base}/Image > $out/Image
    /bin/cat ${base}/initrd > $out/initrd
    %s
    %s
  '' ];
}
`, src, s.salt, name, instance, imageTail, initrdTail)
	if err := os.WriteFile(nix, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
}

// started runs nbship on op in the background.
type started struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr testbin.Buffer
	done   chan error
}

func (s *setup) start(t *testing.T, ctx context.Context, args ...string) *started {
	t.Helper()
	st := &started{done: make(chan error, 1)}
	st.cmd = s.r.Command(ctx, rig.Op, s.bin, args...)
	st.cmd.Dir = s.dir
	st.cmd.Stdout = &st.stdout
	st.cmd.Stderr = &st.stderr
	if err := st.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { st.done <- st.cmd.Wait() }()
	t.Cleanup(func() { st.cmd.Process.Kill() })
	return st
}

func (st *started) wait(t *testing.T, limit time.Duration) error {
	t.Helper()
	select {
	case err := <-st.done:
		return err
	case <-time.After(limit):
		st.cmd.Process.Kill()
		t.Fatalf("nbship did not end within %v (a hang):\n%s", limit, st.stderr.String())
	}
	return nil
}

// midStream waits until the receiver on pxe has written data into a
// staging directory of instance: the transfer is under way.
func midStream(t *testing.T, r *rig.Rig, instance string, st *started) {
	t.Helper()
	waitStaging(t, r, instance, st, "the transfer under way", func(dir string) bool {
		var n int64
		filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n += fi.Size()
			}
			return nil
		})
		return n > 1<<20
	})
}

// waitStaging waits until seen holds for a staging directory of instance
// on pxe, polling often enough to catch a fast transfer near a point;
// what names what it waits for.
func waitStaging(t *testing.T, r *rig.Rig, instance string, st *started, what string, seen func(dir string) bool) {
	t.Helper()
	gens := filepath.Join(r.PXEDir, ".nbship", "generations", instance)
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-st.done:
			st.done <- err
			t.Fatalf("nbship ended (%v) before %s:\n%s", err, what, st.stderr.String())
		default:
		}
		ents, _ := os.ReadDir(gens)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".staging-") && seen(filepath.Join(gens, e.Name())) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("never saw %s:\n%s", what, st.stderr.String())
}

// nbshipPID finds the remote end (sender or recv) on host.
func nbshipPID(t *testing.T, r *rig.Rig, host, role string) int {
	t.Helper()
	pids, err := r.Processes(host, "nbship")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pids {
		cl, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
		if bytes.Contains(cl, []byte("\x00"+role+"\x00")) {
			return p
		}
	}
	t.Fatalf("no nbship %s on %s (pids %v)", role, host, pids)
	return 0
}

// publishedBefore publishes a first generation and returns its served
// netboot.ipxe and Image, which every failed run must leave in place.
func publishedBefore(t *testing.T, ctx context.Context, instance string) (s *setup, ipxe, image []byte) {
	t.Helper()
	s = newSetup(t, instance)
	s.resetSlot(t, ctx, instance)
	s.freshImage(t, instance)
	if _, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config); err != nil {
		t.Fatalf("first publish: %v\n%s", err, stderr)
	}
	got := s.served(t, ctx, instance, "netboot.ipxe", "Image")
	return s, got["netboot.ipxe"], got["Image"]
}

// publishedThenFresh publishes a first c2.large.arm image (s, and what
// the slot serves), and makes a second setup whose image is new.
func publishedThenFresh(t *testing.T, ctx context.Context) (s, s2 *setup, ipxe, image []byte) {
	t.Helper()
	s, ipxe, image = publishedBefore(t, ctx, "c2.large.arm")
	s2 = newSetup(t, "c2.large.arm")
	s2.freshImage(t, "c2.large.arm")
	return s, s2, ipxe, image
}

// startMidStream starts nbship with args and waits until its transfer
// into the c2.large.arm slot is under way.
func (s *setup) startMidStream(t *testing.T, ctx context.Context, args ...string) *started {
	t.Helper()
	st := s.start(t, ctx, args...)
	midStream(t, s.r, "c2.large.arm", st)
	return st
}

// leftAsBefore checks what a failed run over publishedThenFresh must
// leave: the slot serving the first image, no nbship on the hosts and no
// staging directory.
func leftAsBefore(t *testing.T, ctx context.Context, s *setup, ipxe, image []byte) {
	t.Helper()
	unchanged(t, ctx, s, "c2.large.arm", ipxe, image)
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)
}

// unchanged checks that the slot still serves what it did before.
func unchanged(t *testing.T, ctx context.Context, s *setup, instance string, ipxe, image []byte) {
	t.Helper()
	got := s.served(t, ctx, instance, "netboot.ipxe", "Image")
	if !bytes.Equal(got["netboot.ipxe"], ipxe) || !bytes.Equal(got["Image"], image) {
		t.Errorf("the published image changed after a failed run")
	}
}

// oneLine checks that the run's final error line names what it must.
func oneLine(t *testing.T, stderr string, want ...string) {
	t.Helper()
	last := lastErrorLine(stderr)
	for _, w := range want {
		if !strings.Contains(last, w) {
			t.Errorf("last error line %q lacks %q\nstderr:\n%s", last, w, stderr)
		}
	}
}

// lastErrorLine is the final "nbship: ..." line that is not a hint.
func lastErrorLine(stderr string) string {
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "nbship: ") && !strings.HasPrefix(lines[i], "nbship: hint:") {
			return lines[i]
		}
	}
	return ""
}

func TestFaultEndKilledMidStream(t *testing.T) {
	for _, tc := range []struct {
		host, role, names string
	}{
		{rig.Build, "send", "root@builder"},
		// The killed receiver cannot remove its staging; the controller's
		// sweep after the failure does (noStaging below).
		{rig.PXE, "recv", "netboot@pxe"},
	} {
		t.Run(tc.role, func(t *testing.T) {
			ctx := mustCtx(t, 6*time.Minute)
			s, s2, ipxe, image := publishedThenFresh(t, ctx)
			st := s2.startMidStream(t, ctx, "aarch64", "--config", s2.config, "--retries", "0")
			syscall.Kill(nbshipPID(t, s.r, tc.host, tc.role), syscall.SIGKILL)
			if err := st.wait(t, 2*time.Minute); err == nil {
				t.Fatalf("nbship succeeded with its %s killed:\n%s", tc.role, st.stderr.String())
			}
			oneLine(t, st.stderr.String(), tc.names)
			leftAsBefore(t, ctx, s, ipxe, image)
		})
	}
}

func TestFaultOperatorInterrupted(t *testing.T) {
	ctx := mustCtx(t, 6*time.Minute)
	s, s2, ipxe, image := publishedThenFresh(t, ctx)
	st := s2.startMidStream(t, ctx, "aarch64", "--config", s2.config)
	st.cmd.Process.Signal(os.Interrupt)
	stopped := time.Now()
	err := st.wait(t, time.Minute)
	if code := st.cmd.ProcessState.ExitCode(); err == nil || code != 130 {
		t.Errorf("interrupted nbship exited %d (%v), want 130", code, err)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	if d := time.Since(stopped); d > 10*time.Second {
		t.Errorf("remote ends took %v to stop after Ctrl-C, want a few seconds", d)
	}
	leftAsBefore(t, ctx, s, ipxe, image)
}

func TestFaultDirectLinkDroppedMidStream(t *testing.T) {
	ctx := mustCtx(t, 6*time.Minute)
	s, s2, ipxe, image := publishedThenFresh(t, ctx)
	st := s2.startMidStream(t, ctx, "aarch64", "--config", s2.config, "--path", "direct")
	if err := s.r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Link("build-pxe", true) })
	// No hang: the dead link ends the run (TCP_USER_TIMEOUT, keepalives).
	if err := st.wait(t, 2*time.Minute); err == nil {
		t.Fatalf("nbship succeeded over a dropped link:\n%s", st.stderr.String())
	}
	s.r.Link("build-pxe", true)
	leftAsBefore(t, ctx, s, ipxe, image)
}

func TestFaultChangedBuildHostKeyRefused(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 2*time.Minute)
	if err := s.r.Rekey(rig.Build); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Trust() })
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config)
	if err == nil {
		t.Fatalf("nbship ran against a builder with a changed key:\n%s", stderr)
	}
	if last := lastErrorLine(stderr); !strings.Contains(last, "builder") || !strings.Contains(strings.ToLower(last), "changed") || !strings.Contains(last, "SHA256:") {
		t.Errorf("error line %q does not name the builder, the change and the fingerprint", last)
	}
	for _, step := range []string{"instantiating", "uploaded nbship", "building on"} {
		if strings.Contains(stderr, step) {
			t.Errorf("nbship went on to %q after a host key failure", step)
		}
	}
}

func TestFaultPXEDiskFills(t *testing.T) {
	ctx := mustCtx(t, 6*time.Minute)
	// pxeDir on a 100 MiB tmpfs: one image (about 77 MB) fits, two do not.
	small := filepath.Join(rigDirOf(t), "pxe", "small-"+strconv.Itoa(os.Getpid()))
	r := rig.Require(t)
	for _, c := range [][]string{{"mkdir", "-p", small}, {"mount", "-t", "tmpfs", "-o", "size=100m,mode=0755", "tmpfs", small}, {"chown", "netboot:", small}} {
		if out, err := r.Run(ctx, rig.PXE, c[0], c[1:]...); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	t.Cleanup(func() {
		r.Run(context.Background(), rig.PXE, "umount", small)
		r.Run(context.Background(), rig.PXE, "rmdir", small)
	})
	s := newSetup(t, "c2.large.arm", "")
	conf, _ := os.ReadFile(s.config)
	conf = bytes.Replace(conf, []byte(r.PXEDir+"/"), []byte(small+"/"), 1)
	os.WriteFile(s.config, conf, 0o644)
	s.freshImage(t, "c2.large.arm")
	if _, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config); err != nil {
		t.Fatalf("first publish onto the tmpfs: %v\n%s", err, stderr)
	}
	slot := small + "/hydra-c2.large.arm"
	before, err := r.Run(ctx, rig.PXE, "sh", "-c", "cd "+slot+"/ && sha256sum Image initrd netboot.ipxe")
	if err != nil {
		t.Fatal(err)
	}
	s2 := newSetup(t, "c2.large.arm")
	s2.config = s.config
	s2.dir = s.dir
	s2.salt = s.salt + "-second"
	s2.freshImage(t, "c2.large.arm")
	_, stderr, err := s2.run(t, ctx, "aarch64", "--config", s2.config)
	if err == nil {
		t.Fatalf("a second image fit on a tmpfs too small for two:\n%s", stderr)
	}
	if last := lastErrorLine(stderr); !strings.Contains(last, "no space left on device") {
		t.Errorf("error line %q does not say the disk is full", last)
	}
	after, err := r.Run(ctx, rig.PXE, "sh", "-c", "cd "+slot+"/ && sha256sum Image initrd netboot.ipxe")
	if err != nil || after != before {
		t.Errorf("the published image changed after the disk filled: %v\nbefore %s\nafter %s", err, before, after)
	}
	left, _ := r.Run(ctx, rig.PXE, "find", small, "-name", ".staging-*")
	if strings.TrimSpace(left) != "" {
		t.Errorf("staging left on the full disk: %s", left)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}

func rigDirOf(t *testing.T) string { return rig.Require(t).Dir }

func TestFaultBuildHostWithoutNix(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 2*time.Minute)
	// A /usr/bin without Nix's commands, bound over the build host's only.
	nonix := filepath.Join(s.r.Dir, "build", "bin-without-nix")
	os.RemoveAll(nonix)
	if err := os.Mkdir(nonix, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(nonix) })
	ents, err := os.ReadDir("/usr/bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		n := e.Name()
		if n == "nix" || strings.HasPrefix(n, "nix-") || n == "uname" {
			continue
		}
		src, dst := filepath.Join("/usr/bin", n), filepath.Join(nonix, n)
		if e.Type()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(src)
			os.Symlink(l, dst)
			continue
		}
		os.Link(src, dst)
	}
	uname, err := s.r.Run(ctx, rig.Build, "cat", "/usr/bin/uname") // the rig's aarch64 uname
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nonix, "uname"), []byte(uname), 0o755); err != nil {
		t.Fatal(err)
	}
	bindOnBuild(t, ctx, s.r, nonix, "/usr/bin")
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config)
	if err == nil {
		t.Fatalf("nbship succeeded on a build host without Nix:\n%s", stderr)
	}
	if last := lastErrorLine(stderr); !strings.Contains(last, "has no nix-store") || !strings.Contains(last, "root@builder") {
		t.Errorf("error line %q does not say the builder lacks Nix", last)
	}
	if strings.Contains(stderr, "building on") {
		t.Errorf("nbship tried to build anyway")
	}
}

// bindOnBuild bind-mounts src over dst on the build host until the test
// ends.
func bindOnBuild(t *testing.T, ctx context.Context, r *rig.Rig, src, dst string) {
	t.Helper()
	if out, err := r.Run(ctx, rig.Build, "mount", "--bind", src, dst); err != nil {
		t.Fatalf("bind-mounting %s over the build host's %s: %v %s", src, dst, err, out)
	}
	// Lazily: processes of the run may still have files open under it.
	t.Cleanup(func() { r.Run(context.Background(), rig.Build, "umount", "-l", dst) })
}

func TestFaultBuildHostOfAnotherArchitecture(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 2*time.Minute)
	fake := filepath.Join(s.dir, "uname")
	os.WriteFile(fake, []byte("#!/bin/sh\ncase \"$1\" in -m) echo riscv64;; *) echo Linux;; esac\n"), 0o755)
	bindOnBuild(t, ctx, s.r, fake, "/usr/bin/uname")
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config)
	if err == nil {
		t.Fatalf("nbship went on with a riscv64 build host:\n%s", stderr)
	}
	if last := lastErrorLine(stderr); !strings.Contains(last, `unsupported machine "riscv64"`) || !strings.Contains(last, "root@builder") {
		t.Errorf("error line %q does not name the host and its machine", last)
	}
	if strings.Contains(stderr, "instantiating") || strings.Contains(stderr, "building on") {
		t.Errorf("nbship did build work before refusing the host")
	}
}

// stagedFile waits until a staging directory of instance holds a file
// named name (the receiver creates a file when the one before it is
// complete and verified).
func stagedFile(t *testing.T, r *rig.Rig, instance, name string, st *started) {
	t.Helper()
	stagedGrown(t, r, instance, name, 0, st)
}

func TestFaultRetryAfterDroppedLinkSendsOnlyWhatIsMissing(t *testing.T) {
	ctx := mustCtx(t, 6*time.Minute)
	s := newSetup(t, "c2.large.arm")
	s.resetSlot(t, ctx, "c2.large.arm")
	s.freshImage(t, "c2.large.arm")
	// Image is complete and verified once the receiver starts on initrd.
	res := cutAndRetry(t, ctx, s, 3*time.Minute, func(st *started) {
		stagedFile(t, s.r, "c2.large.arm", "initrd", st)
	})
	// The retry found the direct link down and went over SSH, and did not
	// send Image again: the first attempt had verified it.
	if res.Path != "ssh" || res.FilesSent != 2 {
		t.Errorf("retry: path %s, %d files sent; want ssh and 2 (Image reused)", res.Path, res.FilesSent)
	}
	served := s.served(t, ctx, "c2.large.arm", netbootFiles...)
	for _, f := range netbootFiles {
		if want := s.storeFile(t, ctx, rig.Build, res.Out+"/"+f); !bytes.Equal(served[f], want) {
			t.Errorf("%s served differs from the build output", f)
		}
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)
}

// cutAndRetry runs nbship aarch64 with one retry (and args), drops the
// build–pxe link once cut returns, and returns the summary of the run,
// which must have succeeded on its second attempt within limit.
func cutAndRetry(t *testing.T, ctx context.Context, s *setup, limit time.Duration, cut func(*started), args ...string) buildResult {
	t.Helper()
	st := s.start(t, ctx, append([]string{"aarch64", "--config", s.config, "--json", "--retries", "1"}, args...)...)
	cut(st)
	if err := s.r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Link("build-pxe", true) })
	if err := st.wait(t, limit); err != nil {
		t.Fatalf("nbship with one retry: %v\n%s", err, st.stderr.String())
	}
	if stderr := st.stderr.String(); !strings.Contains(stderr, "attempt 1 of 2 failed") {
		t.Errorf("stderr does not report the failed first attempt:\n%s", stderr)
	}
	return parseJSON[buildResult](t, st.stdout.String())
}

func TestFaultTwoRunsForOneSlotAtOnce(t *testing.T) {
	ctx := mustCtx(t, 8*time.Minute)
	a := newSetup(t, "c2.large.arm")
	a.resetSlot(t, ctx, "c2.large.arm")
	a.freshImage(t, "c2.large.arm")
	b := newSetup(t, "c2.large.arm")
	b.freshImage(t, "c2.large.arm")
	ra := a.start(t, ctx, "aarch64", "--config", a.config, "--json")
	rb := b.start(t, ctx, "aarch64", "--config", b.config, "--json")
	ea, eb := ra.wait(t, 5*time.Minute), rb.wait(t, 5*time.Minute)
	if ea != nil || eb != nil {
		t.Fatalf("two runs at once: %v / %v\n--- a:\n%s\n--- b:\n%s", ea, eb, ra.stderr.String(), rb.stderr.String())
	}
	// Both published, one after the other: two generations, the slot
	// serving the one that finished last, complete.
	out, err := s2run(ctx, a, "ls", a.r.PXEDir+"/.nbship/generations/c2.large.arm")
	if err != nil {
		t.Fatal(err)
	}
	gens := 0
	for _, l := range strings.Fields(out) {
		if !strings.HasPrefix(l, ".") && !strings.HasSuffix(l, ".sums") {
			gens++
		}
	}
	if gens != 2 {
		t.Errorf("generations after two runs = %d (%q), want 2", gens, out)
	}
	served := a.served(t, ctx, "c2.large.arm", "netboot.ipxe")["netboot.ipxe"]
	if !bytes.Contains(served, []byte(a.salt)) && !bytes.Contains(served, []byte(b.salt)) {
		t.Errorf("served netboot.ipxe is from neither run")
	}
	noStaging(t, a.r)
}

func s2run(ctx context.Context, s *setup, name string, args ...string) (string, error) {
	return s.r.Run(ctx, rig.PXE, name, args...)
}

func TestFaultSSHPathLinkDroppedMidStream(t *testing.T) {
	ctx := mustCtx(t, 6*time.Minute)
	s, s2, ipxe, image := publishedThenFresh(t, ctx)
	// The operator's SSH notices a dead host after three missed keepalives:
	// 5 s apart here (ServerAliveInterval) to keep the test short.
	sshConfig := filepath.Join(s2.dir, "ssh_config")
	base, err := os.ReadFile(filepath.Join(s.r.OpHome, ".ssh", "config"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(sshConfig, append([]byte("Host *\n\tServerAliveInterval 5\n\n"), base...), 0o644)
	st := s2.startMidStream(t, ctx, "aarch64", "--config", s2.config, "--ssh-config", sshConfig, "--path", "ssh", "--retries", "0", "--idle-timeout", "10s")
	// The operator loses the PXE host: its SSH connection and the channel
	// it carries die without a word.
	if err := s.r.Link("op-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Link("op-pxe", true) })
	if err := st.wait(t, 3*time.Minute); err == nil {
		t.Fatalf("nbship succeeded without its PXE host:\n%s", st.stderr.String())
	}
	// The receiver, cut off behind an SSH session nobody closed, gives up
	// by itself (idle timeout) and cleans up.
	noNbshipLeftWithin(t, s.r, time.Minute, rig.Build, rig.PXE)
	if err := s.r.Link("op-pxe", true); err != nil {
		t.Fatal(err)
	}
	leftAsBefore(t, ctx, s, ipxe, image)
}

// noNbshipLeftWithin is noNbshipLeft with a longer wait, for ends that
// must notice by themselves that their peer is gone.
func noNbshipLeftWithin(t *testing.T, r *rig.Rig, d time.Duration, hosts ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		left := 0
		for _, h := range hosts {
			pids, _ := r.Processes(h, "nbship")
			left += len(pids)
		}
		if left == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	noNbshipLeft(t, r, hosts...)
}
