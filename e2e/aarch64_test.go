package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/tail"
)

var netbootFiles = []string{"Image", "initrd", "netboot.ipxe"}

func TestAarch64EndToEnd(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 5*time.Minute)
	stdout, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config, "--json")
	if err != nil {
		t.Fatalf("nbship aarch64: %v\n%s", err, stderr)
	}
	res := parseJSON[buildResult](t, stdout)
	if res.Path != "direct" {
		t.Errorf("path = %q, want direct", res.Path)
	}
	if res.Files != 3 || res.Bytes == 0 || res.WireBytes == 0 {
		t.Errorf("summary = %+v, want 3 files and non-zero bytes", res)
	}
	if !strings.HasSuffix(res.Published, "/hydra-c2.large.arm") {
		t.Errorf("published = %q", res.Published)
	}
	// The build ran on the builder: its log came back prefixed.
	if !strings.Contains(stderr, "root@builder: building '/nix/store/") {
		t.Errorf("no build log from the builder in stderr:\n%s", stderr)
	}
	served := s.served(t, ctx, "c2.large.arm", netbootFiles...)
	for _, f := range netbootFiles {
		want := s.storeFile(t, ctx, rig.Build, res.Out+"/"+f)
		if !bytes.Equal(served[f], want) {
			t.Errorf("%s served by nginx (%d bytes) differs from the build output (%d bytes)", f, len(served[f]), len(want))
		}
	}
	if !bytes.Contains(served["netboot.ipxe"], []byte(s.salt)) {
		t.Errorf("served netboot.ipxe is not this test's build (no salt %q)", s.salt)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)

	// Shipping the same image again moves no file data: the receiver has
	// every hash already.
	stdout, stderr, err = s.run(t, ctx, "aarch64", "--config", s.config, "--json")
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, stderr)
	}
	again := parseJSON[buildResult](t, stdout)
	if again.FilesSent != 0 || again.Bytes != 0 || again.WireBytes > 64<<10 {
		t.Errorf("re-ship sent %d files, %d bytes, %d on the wire; want nothing but metadata", again.FilesSent, again.Bytes, again.WireBytes)
	}
}

func TestAarch64FallsBackToSSH(t *testing.T) {
	// A slot of its own, emptied, so that every file crosses over SSH.
	s := newSetup(t, "c1.large.arm")
	ctx := mustCtx(t, 5*time.Minute)
	s.resetSlot(t, ctx, "c1.large.arm")
	if err := s.r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Link("build-pxe", true) })
	stdout, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config, "--json", "--dial-timeout", "2s")
	if err != nil {
		t.Fatalf("nbship aarch64 with the direct link down: %v\n%s", err, stderr)
	}
	res := parseJSON[buildResult](t, stdout)
	if res.Path != "ssh" {
		t.Errorf("path = %q, want ssh", res.Path)
	}
	if res.FilesSent != 3 || res.WireBytes < 40<<20 {
		t.Errorf("over SSH: %d files sent, %d bytes carried; want all 3 files, tens of MB", res.FilesSent, res.WireBytes)
	}
	if n := strings.Count(stderr, "carrying the channel over SSH"); n != 1 {
		t.Errorf("stderr says %d times that it carries the channel over SSH, want once:\n%s", n, stderr)
	}
	served := s.served(t, ctx, "c1.large.arm", "netboot.ipxe", "Image")
	for _, f := range []string{"netboot.ipxe", "Image"} {
		if want := s.storeFile(t, ctx, rig.Build, res.Out+"/"+f); !bytes.Equal(served[f], want) {
			t.Errorf("%s served differs from the build output", f)
		}
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}

func TestAarch64DirectPathFailsCleanly(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 5*time.Minute)
	// Something is published first; it must survive the failed run.
	if _, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config); err != nil {
		t.Fatalf("first publish: %v\n%s", err, stderr)
	}
	before := s.served(t, ctx, "c2.large.arm", "netboot.ipxe")["netboot.ipxe"]

	other := newSetup(t, "c2.large.arm") // a different image
	if err := s.r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.r.Link("build-pxe", true) })
	_, stderr, err := other.run(t, ctx, "aarch64", "--config", other.config, "--path", "direct", "--dial-timeout", "2s")
	if err == nil {
		t.Fatalf("--path direct succeeded with the direct link down:\n%s", stderr)
	}
	last := tail.LastLine(stderr)
	if !strings.Contains(last, "could not reach the receiver at 10.77.3.2:61616") {
		t.Errorf("last line = %q, want it to say the build host could not reach the receiver", last)
	}
	if strings.Contains(stderr, "over SSH") {
		t.Errorf("--path direct fell back to SSH:\n%s", stderr)
	}
	if after := s.served(t, ctx, "c2.large.arm", "netboot.ipxe")["netboot.ipxe"]; !bytes.Equal(after, before) {
		t.Errorf("the published netboot.ipxe changed after a failed run")
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)
}

func TestAarch64ChangedHostKeyRefused(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 2*time.Minute)
	if err := s.r.Rekey(rig.PXE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.r.Trust(); err != nil {
			t.Errorf("restoring known_hosts: %v", err)
		}
	})
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config)
	if err == nil {
		t.Fatalf("nbship ran against a host with a changed key:\n%s", stderr)
	}
	if !regexp.MustCompile(`(?i)netboot@pxe|pxe`).MatchString(stderr) || !strings.Contains(strings.ToLower(stderr), "changed") || !strings.Contains(stderr, "SHA256:") {
		t.Errorf("stderr does not name the host, the change and the key's fingerprint:\n%s", stderr)
	}
	// Refused before any command: nothing was instantiated, built or run.
	for _, step := range []string{"instantiating", "copying the closure", "building on", "uploaded nbship"} {
		if strings.Contains(stderr, step) {
			t.Errorf("nbship went on to %q after a host key failure:\n%s", step, stderr)
		}
	}
}

func TestNothingSecretOnArgv(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 5*time.Minute)
	var (
		mu      sync.Mutex
		samples = map[string][]string{}
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			for _, h := range []string{rig.Build, rig.PXE, rig.Op} {
				cls, err := s.r.Cmdlines(h)
				if err != nil {
					continue
				}
				mu.Lock()
				samples[h] = append(samples[h], cls...)
				mu.Unlock()
			}
		}
	}()
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config)
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("nbship aarch64: %v\n%s", err, stderr)
	}
	sawSender, sawRecv := false, false
	for h, cls := range samples {
		for _, cl := range cls {
			if strings.Contains(cl, "nbship send") || strings.Contains(cl, "nbship' 'send") {
				sawSender = sawSender || h == rig.Build
			}
			if strings.Contains(cl, "nbship recv") || strings.Contains(cl, "nbship' 'recv") {
				sawRecv = sawRecv || h == rig.PXE
			}
			for _, secret := range []string{"SHA256:", "PRIVATE KEY", "--peer-pin SHA", "-k ", "PACKET_AUTH_TOKEN"} {
				if strings.Contains(cl, secret) {
					t.Errorf("%s: a process's argv holds %q: %s", h, secret, cl)
				}
			}
		}
	}
	// The sampling must have seen both ends running, or it proved nothing.
	if !sawSender || !sawRecv {
		t.Errorf("sampling never saw the running ends (sender %v, recv %v)", sawSender, sawRecv)
	}
}

// An image the receiver refuses (an x86 kernel for an arm slot) is refused
// once: the run exits 65 with the PXE host's reason, and is not retried.
func TestAarch64RefusedImageIsNotRetried(t *testing.T) {
	const inst = "c2.large.arm"
	s := newSetup(t, inst)
	ctx := mustCtx(t, 5*time.Minute)
	s.useNix(t, inst, wrongKernelNix(s.salt, "aarch64-linux", "Image", debianAmd64, debianArm64))
	_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config, "--retries", "2")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 65 {
		t.Fatalf("aarch64 with an x86 kernel: %v, want exit 65 (refused)\n%s", err, stderr)
	}
	if strings.Contains(stderr, "attempt 1 of 3 failed") {
		t.Errorf("a refused image was sent again:\n%s", stderr)
	}
	const want = "Image is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image"
	if last := tail.LastLine(stderr); !strings.HasPrefix(last, "nbship: ship: netboot@pxe refused what it was sent: ") || !strings.Contains(last, want) {
		t.Errorf("last line = %q, want the PXE host's refusal naming the file and both architectures", last)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
	noStaging(t, s.r)
}

// noNetbootFilesNix is an aarch64 build output with an Image and nothing
// else (%q: the salt).
const noNetbootFilesNix = `derivation {
  name = "netboot-no-initrd"; system = "aarch64-linux"; builder = "/bin/sh"; salt = %q;
  args = [ "-c" "/bin/mkdir $out && echo not-a-kernel > $out/Image" ];
}
`

// A build output without the netboot files is refused on the build host,
// before either end starts: the realise's one command on the host (which
// also resolves the GC root) names what is missing.
func TestAarch64OutputWithoutNetbootFiles(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	s.useNix(t, "c2.large.arm", fmt.Sprintf(noNetbootFilesNix, s.salt))
	_, stderr, err := s.run(t, mustCtx(t, 5*time.Minute), "aarch64", "--config", s.config)
	if err == nil {
		t.Fatalf("aarch64 published an output without initrd and netboot.ipxe:\n%s", stderr)
	}
	last := tail.LastLine(stderr)
	if !strings.Contains(last, "lacks initrd, netboot.ipxe; is this a netboot image derivation?") || !strings.Contains(last, "/nix/store/") {
		t.Errorf("last line = %q, want the output path and the missing files", last)
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)
}
