package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/internal/testbin"
)

// needQEMU skips (or with NBSHIP_REQUIRE_RIG=1 fails) without
// qemu-system-x86_64 and Debian's iPXE ROM for virtio-net.
func needQEMU(t *testing.T) string {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err == nil {
		_, err = os.Stat("/usr/lib/ipxe/qemu/efi-virtio.rom")
	}
	if err != nil {
		testbin.Missing(t, "boot test: %v (run scripts/deps.sh: qemu-system-x86, ipxe-qemu)", err)
	}
	return qemu
}

// bootTimeout bounds the boot: Debian's installer kernel, emulated (TCG),
// reaches "Freeing unused kernel" within about 40 s on an idle 2-core
// machine.
const bootTimeout = 180 * time.Second

// A machine netboots what nbship x86_64 published: QEMU (TCG) with iPXE in
// the operator's network fetches the slot's netboot.ipxe from nginx on the
// PXE host, then the kernel and initrd it names, and the kernel boots with
// the script's command line.
func TestBootPublishedImage(t *testing.T) {
	const inst = "m2.xlarge.x86"
	qemu := needQEMU(t)
	s := newSetup(t, inst)
	ctx := mustCtx(t, 8*time.Minute)
	stdout, stderr, err := s.run(t, ctx, "x86_64", "--config", s.config, "--json")
	if err != nil {
		t.Fatalf("nbship x86_64: %v\n%s", err, stderr)
	}
	res := parseJSON[buildResult](t, stdout)
	files := s.served(t, ctx, inst, x86Files...)
	if !bytes.Contains(files["netboot.ipxe"], []byte(s.salt)) {
		t.Fatalf("nginx does not serve this test's netboot.ipxe")
	}

	accessLog := filepath.Join(s.r.Dir, "pxe", "nginx", "logs", "access.log")
	logStart := fileSize(accessLog)
	dir := t.TempDir()
	// Two UARTs, as Packet's x86 machines have: the script names ttyS1
	// (Packet's serial-over-SSH console) as well as ttyS0. Linux takes the
	// first console= of the 8250 driver for its messages; whichever it is,
	// both are read here, and neither is a UART that is not there (writing
	// to one costs a timeout per character).
	ttyS0, ttyS1 := filepath.Join(dir, "ttyS0.log"), filepath.Join(dir, "ttyS1.log")
	url := s.r.HTTPURL + "hydra-" + inst + "/netboot.ipxe"
	qctx, cancel := context.WithTimeout(ctx, bootTimeout+30*time.Second)
	defer cancel()
	cmd := s.r.Command(qctx, rig.Op, qemu,
		"-accel", "tcg", "-m", "1024", "-smp", "1",
		"-netdev", "user,id=n0,bootfile="+url,
		"-device", "virtio-net-pci,netdev=n0",
		"-boot", "n", "-nographic", "-monitor", "none",
		"-serial", "file:"+ttyS0, "-serial", "file:"+ttyS1)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var stopOnce sync.Once
	stopQEMU := func() {
		stopOnce.Do(func() {
			cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("qemu (pid %d) did not exit when killed", cmd.Process.Pid)
			}
		})
	}
	defer stopQEMU()

	console := func() string {
		a, _ := os.ReadFile(ttyS0)
		b, _ := os.ReadFile(ttyS1)
		return string(a) + string(b)
	}
	steps := []struct {
		what string
		re   *regexp.Regexp
	}{
		{"iPXE fetching the published script", regexp.MustCompile(regexp.QuoteMeta(url) + `\.\.\.[^\n]* ok`)},
		{"iPXE loading the kernel", regexp.MustCompile(`bzImage\.\.\.[^\n]* ok`)},
		{"iPXE loading the initrd", regexp.MustCompile(`initrd\.\.\.[^\n]* ok`)},
		{"the kernel starting", regexp.MustCompile(`Linux version \S+`)},
		{"the kernel taking the script's command line", regexp.MustCompile(`Command line: [^\n]*init=/sbin/init initrd=initrd [^\n]*console=ttyS[01],115200n8 console=ttyS[01],115200n8`)},
		{"the kernel finishing its init", regexp.MustCompile(`Freeing unused kernel (image )?(\(initmem\) )?memory`)},
	}
	start := time.Now()
	next := 0
	var out string
	for next < len(steps) {
		out = console()
		for next < len(steps) && steps[next].re.MatchString(out) {
			t.Logf("%5.1fs: %s", time.Since(start).Seconds(), steps[next].what)
			next++
		}
		if next == len(steps) {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("qemu exited (%v) before %s\n%s\nconsole:\n%s", err, steps[next].what, qout.String(), consoleEnd(out, 3000))
		case <-time.After(500 * time.Millisecond):
		}
		if time.Since(start) > bootTimeout {
			t.Fatalf("no sign of %s within %v; console:\n%s", steps[next].what, bootTimeout, consoleEnd(out, 3000))
		}
	}
	stopQEMU()
	if pids, err := s.r.Processes(rig.Op, "qemu-system-x86_64"); err != nil || len(pids) > 0 {
		t.Errorf("qemu processes left in op: %v, %v", pids, err)
	}

	// nginx served the three files whole, to the machine.
	log := readFrom(t, accessLog, logStart)
	for _, f := range x86Files {
		re := regexp.MustCompile(`"GET /hydra-` + regexp.QuoteMeta(inst+"/"+f) + ` HTTP/1\.[01]" (\d+) (\d+) .*iPXE`)
		m := re.FindStringSubmatch(log)
		if m == nil {
			t.Errorf("nginx access log has no GET of %s by iPXE:\n%s", f, log)
			continue
		}
		if size, _ := strconv.Atoi(m[2]); m[1] != "200" || size != len(files[f]) {
			t.Errorf("nginx answered iPXE's GET of %s with %s, %s bytes; want 200, %d", f, m[1], m[2], len(files[f]))
		}
	}
	t.Logf("booted %s (%s) from %s", res.Out, res.Published, url)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom reads path from offset on.
func readFrom(t *testing.T, path string, offset int64) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if offset > int64(len(b)) {
		offset = 0
	}
	return string(b[offset:])
}

func consoleEnd(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.ToValidUTF8(s, "?")
}
