package e2e

// nbship image on the rig's PXE host, with nginx serving the slots: refused
// images change nothing that is served, a switch is atomic for HTTP
// clients, publishes of one slot queue, rollback and gc over --host.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/tail"
	"github.com/nbship/nbship/internal/testbin"
)

// Debian's netboot files, as the rig's hosts see them.
const (
	debianAmd64 = "/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/"
	debianArm64 = "/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/"
)

// wrongKernelNix is a Nix expression for an image of system whose kernel,
// named file, is the one in Debian's kernelDir, of the other architecture;
// its initrd is the one in initrdDir.
func wrongKernelNix(salt, system, file, kernelDir, initrdDir string) string {
	return fmt.Sprintf(`derivation {
  name = "netboot-wrong-kernel";
  system = %[2]q;
  builder = "/bin/sh";
  salt = %[1]q;
  kernel = builtins.path { path = %[4]s; name = "debian-12-kernel"; };
  initrd = builtins.path { path = %[5]s; name = "debian-12-initrd"; };
  args = [ "-c" "/bin/mkdir $out && /bin/cp $kernel $out/%[3]s && /bin/cp $initrd $out/initrd && printf '#!ipxe\\nkernel %[3]s initrd=initrd\\ninitrd initrd\\nboot\\n' > $out/netboot.ipxe" ];
}
`, salt, system, file, kernelDir+"linux", initrdDir+"initrd.gz")
}

// pxeImages is a directory on the PXE host that its user (netboot) can
// read, holding image directories for the tests and a copy of nbship
// netboot can run.
type pxeImages struct {
	r   *rig.Rig
	dir string
	bin string
}

// newImageSetup is a setup for inst with an empty slot, a context ending
// after limit and a place for images on the PXE host.
func newImageSetup(t *testing.T, inst string, limit time.Duration) (*setup, context.Context, *pxeImages) {
	t.Helper()
	s := newSetup(t, inst)
	ctx := mustCtx(t, limit)
	s.resetSlot(t, ctx, inst)
	return s, ctx, newPXEImages(t, s.r)
}

func newPXEImages(t *testing.T, r *rig.Rig) *pxeImages {
	t.Helper()
	dir, err := os.MkdirTemp(filepath.Join(r.Dir, "pxe", "home"), "e2e-images-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(testbin.Nbship(t, "amd64"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "nbship")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return &pxeImages{r: r, dir: dir, bin: bin}
}

// image makes an image directory laid out like a Nix build output: the
// kernel and initrd are symlinks to Debian's files (of arch "amd64" or
// "arm64"), named kernel and initrd, and netboot.ipxe is a file with
// script in it.
func (p *pxeImages) image(t *testing.T, name, arch, kernel, script string) string {
	t.Helper()
	d := filepath.Join(p.dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	src := map[string]string{"amd64": debianAmd64, "arm64": debianArm64}[arch]
	for link, target := range map[string]string{kernel: src + "linux", "initrd": src + "initrd.gz"} {
		if err := os.Symlink(target, filepath.Join(d, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d, "netboot.ipxe"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// ipxeScript is a netboot.ipxe for kernel, told apart by tag.
func ipxeScript(kernel, tag string) string {
	return fmt.Sprintf("#!ipxe\n# e2e image %s\nkernel %s init=/sbin/init initrd=initrd console=ttyS0,115200n8 ${cmdline}\ninitrd initrd\nboot\n", tag, kernel)
}

// command runs nbship on the PXE host as its user, as an administrator
// logged in there would.
func (p *pxeImages) command(ctx context.Context, args ...string) *exec.Cmd {
	return p.r.Command(ctx, rig.PXE, "/usr/sbin/runuser", append([]string{"-u", "netboot", "--", p.bin}, args...)...)
}

func (p *pxeImages) publish(t *testing.T, ctx context.Context, instance, dir string) {
	t.Helper()
	out, err := p.command(ctx, "image", "publish", "--pxe-dir", p.r.PXEDir, "--instance", instance, "--keep", "20", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("image publish %s on pxe: %v\n%s", dir, err, out)
	}
}

// generations lists the generation directories of a slot on disk.
func generations(t *testing.T, r *rig.Rig, instance string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.PXEDir, ".nbship", "generations", instance))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names
}

func current(t *testing.T, r *rig.Rig, instance string) string {
	t.Helper()
	link, err := os.Readlink(filepath.Join(r.PXEDir, "hydra-"+instance))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Base(link)
}

// An x86 kernel published to the aarch64 slot is refused, over --host from
// the operator as on the PXE host itself, and nginx goes on serving the
// previous generation byte for byte.
func TestImagePublishWrongArchRefused(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 3*time.Minute)
	s.resetSlot(t, ctx, "c2.large.arm")
	p := newPXEImages(t, s.r)
	good := p.image(t, "good", "arm64", "Image", ipxeScript("Image", "good "+s.salt))
	p.publish(t, ctx, "c2.large.arm", good)
	files := []string{"Image", "initrd", "netboot.ipxe"}
	before := s.served(t, ctx, "c2.large.arm", files...)
	gens := generations(t, s.r, "c2.large.arm")

	wrong := p.image(t, "wrong", "amd64", "Image", ipxeScript("Image", "wrong"))
	const want = "Image is an x86_64 bzImage, but slot c2.large.arm needs an aarch64 Image"

	// From the operator's machine: pxeHost and pxeDir from the config.
	stdout, stderr, err := s.run(t, ctx, "image", "publish", "--config", s.config, "--instance", "c2.large.arm", wrong)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 65 {
		t.Fatalf("image publish of an x86 kernel to the arm slot over SSH: %v, want exit 65 (refused)\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) < 2 || lines[len(lines)-2] != "nbship: netboot@pxe: image: "+wrong+"/"+want ||
		!strings.HasPrefix(lines[len(lines)-1], "nbship: hint: nothing was published: "+s.r.PXEDir+"/hydra-c2.large.arm still serves "+gens[0]) {
		t.Errorf("stderr ends with %q, want the PXE host's refusal naming the host, the file and both architectures, and what is still served", lines[max(0, len(lines)-2):])
	}
	if strings.Count(stderr, want) != 1 {
		t.Errorf("the refusal is said %d times, want once:\n%s", strings.Count(stderr, want), stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}

	// On the PXE host itself.
	out, err := p.command(ctx, "image", "publish", "--pxe-dir", s.r.PXEDir, "--instance", "c2.large.arm", wrong).CombinedOutput()
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("image publish on pxe: %v, %s; want the refusal", err, out)
	}

	after := s.served(t, ctx, "c2.large.arm", files...)
	for _, f := range files {
		if !bytes.Equal(before[f], after[f]) {
			t.Errorf("%s served by nginx changed after the refused publishes", f)
		}
	}
	if got := generations(t, s.r, "c2.large.arm"); strings.Join(got, " ") != strings.Join(gens, " ") {
		t.Errorf("generations after the refusals = %v, want still %v", got, gens)
	}
	noStaging(t, s.r)
	noNbshipLeft(t, s.r, rig.PXE)
}

// hammerEnv switches the test binary into the HTTP client that
// TestImageSwitchIsAtomicForHTTP runs inside the operator's namespace.
const (
	hammerURL = "NBSHIP_E2E_HAMMER_URL"
	hammerOut = "NBSHIP_E2E_HAMMER_OUT"
	hammerMin = 200
)

// hammerResult is one distinct answer and how often it came.
type hammerResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	Err    string `json:"err,omitempty"`
	Count  int    `json:"count"`
}

// TestHammerHelper is not a test: run by TestImageSwitchIsAtomicForHTTP
// inside op's network namespace with hammerURL set, it GETs the URL in a
// tight loop on two connections until its stdin closes (and at least
// hammerMin times), then writes what it got to hammerOut.
func TestHammerHelper(t *testing.T) {
	url := os.Getenv(hammerURL)
	if url == "" {
		return
	}
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	var (
		mu      sync.Mutex
		n       int
		results = map[hammerResult]int{}
		wg      sync.WaitGroup
		ready   sync.Once
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
			for {
				mu.Lock()
				done := n >= hammerMin
				mu.Unlock()
				if done {
					select {
					case <-stop:
						return
					default:
					}
				}
				var r hammerResult
				resp, err := client.Get(url)
				if err == nil {
					var b []byte
					b, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					r.Status, r.Body = resp.StatusCode, string(b)
				}
				if err != nil {
					r.Err = err.Error()
				}
				mu.Lock()
				n++
				results[r]++
				mu.Unlock()
				ready.Do(func() { fmt.Println("hammering") })
			}
		}()
	}
	wg.Wait()
	var list []hammerResult
	for r, c := range results {
		r.Count = c
		list = append(list, r)
	}
	b, _ := json.Marshal(list)
	if err := os.WriteFile(os.Getenv(hammerOut), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// While HTTP clients fetch the slot's netboot.ipxe through nginx as fast as
// they can, ten publishes switch the slot: every answer is 200 and exactly
// one generation's script, never a 404, an empty or a mixed file.
func TestImageSwitchIsAtomicForHTTP(t *testing.T) {
	const inst = "c2.medium.x86"
	s, ctx, p := newImageSetup(t, inst, 4*time.Minute)
	scripts := map[string]int{} // content -> generation (0: the first)
	var dirs []string
	for i := 0; i <= 10; i++ {
		sc := ipxeScript("bzImage", fmt.Sprintf("%d of %s %s", i, t.Name(), strings.Repeat("x", 4096*i))) // sizes differ too
		scripts[sc] = i
		dirs = append(dirs, p.image(t, fmt.Sprint(i), "amd64", "bzImage", sc))
	}
	p.publish(t, ctx, inst, dirs[0])

	out := filepath.Join(t.TempDir(), "hammer.json")
	hctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	h := s.r.Command(hctx, rig.Op, os.Args[0], "-test.run=^TestHammerHelper$")
	h.Env = append(os.Environ(), hammerURL+"="+s.r.HTTPURL+"hydra-"+inst+"/netboot.ipxe", hammerOut+"="+out)
	stdin, err := h.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := h.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var herr bytes.Buffer
	h.Stderr = &herr
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	defer h.Process.Kill()
	br := bufio.NewReader(stdout)
	first, err := br.ReadString('\n')
	if first != "hammering\n" {
		t.Fatalf("HTTP client in op: %q, %v; stderr %s", first, err, herr.String())
	}
	start := time.Now()
	for _, d := range dirs[1:] {
		p.publish(t, ctx, inst, d)
	}
	took := time.Since(start)
	stdin.Close()
	io.Copy(io.Discard, br)
	if err := h.Wait(); err != nil {
		t.Fatalf("HTTP client in op: %v\n%s", err, herr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var results []hammerResult
	if err := json.Unmarshal(b, &results); err != nil {
		t.Fatal(err)
	}
	total := 0
	seen := map[int]int{}
	for _, r := range results {
		total += r.Count
		g, ok := scripts[r.Body]
		switch {
		case r.Err != "" || r.Status != 200:
			t.Errorf("%d answers: status %d, error %q, body %.80q", r.Count, r.Status, r.Err, r.Body)
		case !ok:
			t.Errorf("%d answers: 200 with a body that is no generation's netboot.ipxe (%d bytes): %.120q", r.Count, len(r.Body), r.Body)
		default:
			seen[g] += r.Count
		}
	}
	t.Logf("%d requests during 10 publishes (%v); answers per generation: %v", total, took.Round(time.Millisecond), seen)
	if total < hammerMin {
		t.Errorf("%d requests, want at least %d", total, hammerMin)
	}
	// The requests spanned the switches, or this proved nothing.
	if len(seen) < 3 {
		t.Errorf("the answers came from %d generations, want several: the requests did not overlap the publishes", len(seen))
	}
	last := s.served(t, ctx, inst, "netboot.ipxe")["netboot.ipxe"]
	if scripts[string(last)] != 10 {
		t.Errorf("after the publishes nginx serves generation %d's script, want the last (10)", scripts[string(last)])
	}
	noStaging(t, s.r)
}

// Two publishes of one slot at once both succeed, one after the other: the
// test holds the slot's lock while both start, so both must wait for it.
func TestImageConcurrentPublishes(t *testing.T) {
	const inst = "m1.xlarge.x86"
	s, ctx, p := newImageSetup(t, inst, 3*time.Minute)
	p.publish(t, ctx, inst, p.image(t, "first", "amd64", "bzImage", ipxeScript("bzImage", "first")))
	before := generations(t, s.r, inst)

	lock, err := os.Open(filepath.Join(s.r.PXEDir, ".nbship", "locks", inst+".lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	type run struct {
		cmd    *exec.Cmd
		stderr testbin.Buffer
		script string
	}
	runs := make([]*run, 2)
	for i := range runs {
		sc := ipxeScript("bzImage", fmt.Sprintf("concurrent %d", i))
		r := &run{script: sc}
		r.cmd = p.command(ctx, "image", "publish", "--pxe-dir", s.r.PXEDir, "--instance", inst, "--keep", "20", "--json",
			p.image(t, fmt.Sprint("c", i), "amd64", "bzImage", sc))
		r.cmd.Stderr = &r.stderr
		r.cmd.Stdout = io.Discard
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		runs[i] = r
	}
	// Both get to the lock and wait there.
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range runs {
		for !strings.Contains(r.stderr.String(), "waiting for slot "+inst) {
			if time.Now().After(deadline) {
				unix.Flock(int(lock.Fd()), unix.LOCK_UN)
				t.Fatalf("a publish did not wait for the held lock; stderr %q", r.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if got := generations(t, s.r, inst); len(got) != len(before) {
		t.Errorf("generations changed while the lock was held: %v", got)
	}
	unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	for i, r := range runs {
		if err := r.cmd.Wait(); err != nil {
			t.Errorf("publish %d: %v\n%s", i, err, r.stderr.String())
		}
	}
	after := generations(t, s.r, inst)
	if len(after) != len(before)+2 {
		t.Fatalf("generations %v after two publishes, was %v: want two more", after, before)
	}
	if cur := current(t, s.r, inst); cur != after[len(after)-1] {
		t.Errorf("slot points at %s, want the newest %s", cur, after[len(after)-1])
	}
	// Each new generation is one of the two images, whole.
	got := map[string]bool{}
	for _, g := range after[len(before):] {
		b, err := os.ReadFile(filepath.Join(s.r.PXEDir, ".nbship", "generations", inst, g, "netboot.ipxe"))
		if err != nil {
			t.Fatal(err)
		}
		got[string(b)] = true
	}
	for i, r := range runs {
		if !got[r.script] {
			t.Errorf("no generation holds publish %d's netboot.ipxe", i)
		}
	}
	noStaging(t, s.r)
}

// rollback and gc from the operator's machine over --host (and over the
// config's pxeHost), seen through nginx.
func TestImageRollbackAndGCOverHost(t *testing.T) {
	const inst = "c2.medium.x86"
	s, ctx, p := newImageSetup(t, inst, 3*time.Minute)
	var scripts []string
	for i := range 5 {
		sc := ipxeScript("bzImage", fmt.Sprintf("rollback %d %s", i, s.salt))
		scripts = append(scripts, sc)
		p.publish(t, ctx, inst, p.image(t, fmt.Sprint(i), "amd64", "bzImage", sc))
	}
	gens := generations(t, s.r, inst)
	if len(gens) != 5 {
		t.Fatalf("generations = %v, want 5", gens)
	}
	served := func() string {
		return string(s.served(t, ctx, inst, "netboot.ipxe")["netboot.ipxe"])
	}
	if served() != scripts[4] {
		t.Fatalf("nginx does not serve the last published script")
	}
	host := []string{"--host", "pxe", "--pxe-dir", s.r.PXEDir, "--instance", inst}

	// The config's pxeHost and pxeDir.
	stdout, stderr, err := s.run(t, ctx, "image", "rollback", "--config", s.config)
	if err != nil {
		t.Fatalf("image rollback --config: %v\n%s", err, stderr)
	}
	if want := fmt.Sprintf("%s/hydra-%s: serving %s (was %s)\n", strings.TrimSuffix(s.r.PXEDir, "/"), inst, gens[3], gens[4]); stdout != want {
		t.Errorf("rollback printed %q, want %q", stdout, want)
	}
	if served() != scripts[3] {
		t.Errorf("after rollback nginx does not serve the previous generation's script")
	}

	// Explicit --host, to a generation by counter.
	if _, stderr, err := s.run(t, ctx, append([]string{"image", "rollback", "--to", "2"}, host...)...); err != nil {
		t.Fatalf("image rollback --host --to 2: %v\n%s", err, stderr)
	}
	if served() != scripts[1] {
		t.Errorf("after rollback --to 2 nginx does not serve generation 2's script")
	}

	// The host's refusal comes back as this command's error, with its status.
	_, stderr, err = s.run(t, ctx, append([]string{"image", "rollback", "--to", "9"}, host...)...)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("rollback --to 9: %v, want exit 1", err)
	}
	if last := tail.LastLine(stderr); !strings.HasPrefix(last, "nbship: pxe: image: slot "+inst+` has no generation "9"`) {
		t.Errorf("rollback --to 9: last line %q, want the host's refusal", last)
	}
	_, stderr, err = s.run(t, ctx, append([]string{"image", "gc", "--bogus"}, host...)...)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(stderr, "unknown flag: --bogus") {
		t.Errorf("gc --bogus: %v, %q; want a usage error (exit 2) before reaching the host", err, stderr)
	}

	// gc keeps the newest 2 and the current one (generation 2).
	stdout, stderr, err = s.run(t, ctx, append([]string{"image", "gc", "--keep", "2", "--json"}, host...)...)
	if err != nil {
		t.Fatalf("image gc --host: %v\n%s", err, stderr)
	}
	var gc struct {
		Keep    int      `json:"keep"`
		Removed []string `json:"removed"`
	}
	if err := json.Unmarshal([]byte(stdout), &gc); err != nil || gc.Keep != 2 || strings.Join(gc.Removed, " ") != gens[2]+" "+gens[0] {
		t.Errorf("gc --json = %q (%v), want keep 2 and %s, %s removed", stdout, err, gens[2], gens[0])
	}
	if got, want := generations(t, s.r, inst), []string{gens[1], gens[3], gens[4]}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("generations after gc --keep 2 = %v, want %v", got, want)
	}
	if served() != scripts[1] {
		t.Errorf("gc changed what nginx serves")
	}
	// Roll forward to the newest, then gc --keep 2 keeps exactly 2.
	if _, stderr, err := s.run(t, ctx, append([]string{"image", "rollback", "--to", gens[4]}, host...)...); err != nil {
		t.Fatalf("rollback --to %s: %v\n%s", gens[4], err, stderr)
	}
	if _, stderr, err := s.run(t, ctx, append([]string{"image", "gc", "--keep", "2"}, host...)...); err != nil {
		t.Fatalf("gc --keep 2: %v\n%s", err, stderr)
	}
	stdout, stderr, err = s.run(t, ctx, append([]string{"image", "list", "--json"}, host...)...)
	if err != nil {
		t.Fatalf("image list --host: %v\n%s", err, stderr)
	}
	var rows []struct {
		Name    string `json:"name"`
		Current bool   `json:"current"`
	}
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil {
		t.Fatalf("list --json = %q: %v", stdout, err)
	}
	if len(rows) != 2 || rows[0].Name != gens[4] || !rows[0].Current || rows[1].Name != gens[3] {
		t.Errorf("list over --host after gc --keep 2 = %+v, want %s (current) and %s", rows, gens[4], gens[3])
	}
	if served() != scripts[4] {
		t.Errorf("after rolling forward nginx does not serve the newest script")
	}
	noNbshipLeft(t, s.r, rig.PXE)
}
