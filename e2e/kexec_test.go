package e2e

// nbship kexec against a real VM: QEMU (TCG) in the operator's network
// boots Debian's amd64 netboot kernel with an initramfs made here from
// Debian's busybox-static, dropbear-bin and kexec-tools (with the
// libraries ldd lists), and answers SSH on a host forward of op's
// loopback. The VM reaches nginx on the PXE host through QEMU's user
// network, as a rented machine reaches the netboot server.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

// vmInit is the initramfs's /init. With /etc/nbship-marker (only in the
// test image's initrd) it prints the marker on the console and makes the
// SSH host key anew, as a freshly booted image has a key of its own.
const vmInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
insmod /lib/modules/e1000.ko
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
if [ -f /etc/nbship-marker ]; then
	cat /etc/nbship-marker >/dev/console
	rm -f /etc/dropbear/dropbear_ed25519_host_key
fi
dropbear -R -E -s -p 22 2>/dev/console
echo NBSHIP-VM-READY >/dev/console
exec sh -c 'while :; do sleep 3600; done'
`

// vm is a running QEMU and how to reach it.
type vm struct {
	port    int
	console string // the serial console's log
	exited  chan error
	stop    func()
}

func needKexecTools(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/usr/bin/busybox", "/usr/sbin/dropbear", "/usr/bin/dropbearkey", "/usr/sbin/kexec", debianAmd64 + "linux", debianArm64 + "linux"} {
		if _, err := os.Stat(p); err != nil {
			testbin.Missing(t, "kexec test: %v (run scripts/deps.sh: busybox-static, dropbear-bin, kexec-tools, debian-installer-12-netboot-*)", err)
		}
	}
	for _, tool := range []string{"cpio", "ldd"} {
		if _, err := exec.LookPath(tool); err != nil {
			testbin.Missing(t, "kexec test: %v (run scripts/deps.sh: cpio)", err)
		}
	}
}

// copyWithLibs copies the program at src to root/bin and the shared
// libraries ldd lists for it to their paths under root.
func copyWithLibs(t *testing.T, root, src string) {
	t.Helper()
	copyFile(t, src, filepath.Join(root, "bin", filepath.Base(src)), 0o755)
	out, err := exec.Command("ldd", src).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", src, err)
	}
	for _, lib := range regexp.MustCompile(`(?m)(/\S+) \(0x`).FindAllStringSubmatch(string(out), -1) {
		copyFile(t, lib[1], filepath.Join(root, lib[1]), 0o755)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst, b, mode)
}

func writeFile(t *testing.T, dst string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dst, mode); err != nil {
		t.Fatal(err)
	}
}

// cpioGz archives the tree at root as a gzipped newc cpio, owned by root.
func cpioGz(t *testing.T, root string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio of %s: %v", root, err)
	}
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
	zw.Write(out)
	zw.Close()
	return b.Bytes()
}

// netbootModule takes a file out of Debian's amd64 netboot initrd.
func netbootModule(t *testing.T, name string) []byte {
	t.Helper()
	cmd := exec.Command("sh", "-c", `zcat "$1" | cpio -i --quiet --to-stdout "$2"`, "sh", debianAmd64+"initrd.gz", name)
	out, err := cmd.Output()
	if err != nil || len(out) == 0 {
		t.Fatalf("taking %s out of %sinitrd.gz: %v", name, debianAmd64, err)
	}
	return out
}

// vmImage is the VM's initramfs and what to check its SSH with.
type vmImage struct {
	base    []byte // the initramfs, gzipped cpio
	hostKey string // its host key, "ssh-ed25519 AAAA…"
}

func buildVMImage(t *testing.T, authorizedKey []byte) vmImage {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"proc", "sys", "dev", "tmp", "etc/dropbear"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	copyFile(t, "/usr/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755)
	for _, p := range []string{"/usr/sbin/dropbear", "/usr/bin/dropbearkey", "/usr/sbin/kexec"} {
		copyWithLibs(t, root, p)
	}
	// Debian's kernel has e1000 (QEMU's default NIC) as a module; its
	// netboot initrd carries it.
	ko := netbootModule(t, "lib/modules/*/kernel/drivers/net/ethernet/intel/e1000/e1000.ko")
	writeFile(t, filepath.Join(root, "lib/modules/e1000.ko"), ko, 0o644)
	writeFile(t, filepath.Join(root, "init"), []byte(vmInit), 0o755)
	writeFile(t, filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	writeFile(t, filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	writeFile(t, filepath.Join(root, "root/.ssh/authorized_keys"), authorizedKey, 0o600)
	os.Chmod(filepath.Join(root, "root/.ssh"), 0o700)
	os.Chmod(filepath.Join(root, "root"), 0o700)
	key := filepath.Join(root, "etc/dropbear/dropbear_ed25519_host_key")
	if out, err := exec.Command("dropbearkey", "-t", "ed25519", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("dropbearkey: %v\n%s", err, out)
	}
	out, err := exec.Command("dropbearkey", "-y", "-f", key).Output()
	if err != nil {
		t.Fatalf("dropbearkey -y: %v", err)
	}
	m := regexp.MustCompile(`(?m)^(ssh-ed25519 \S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("dropbearkey -y printed no key:\n%s", out)
	}
	return vmImage{base: cpioGz(t, root), hostKey: string(m[1])}
}

// markerInitrd is base with /etc/nbship-marker holding marker appended:
// Linux unpacks concatenated archives one over the other.
func markerInitrd(t *testing.T, base []byte, marker string) []byte {
	t.Helper()
	root := filepath.Join(t.TempDir(), "marker")
	writeFile(t, filepath.Join(root, "etc/nbship-marker"), []byte(marker+"\n"), 0o644)
	return append(append([]byte(nil), base...), cpioGz(t, root)...)
}

// freePort picks a port that is free on op's loopback now.
func freePort(t *testing.T, r *rig.Rig) int {
	t.Helper()
	for range 20 {
		var b [2]byte
		rand.Read(b[:])
		port := 20000 + int(b[0])<<8 + int(b[1])%20000
		if port > 60000 {
			continue
		}
		out, _ := r.Run(context.Background(), rig.Op, "ss", "-Htln", fmt.Sprintf("sport = :%d", port))
		if strings.TrimSpace(out) == "" {
			return port
		}
	}
	t.Fatal("no free port on op")
	return 0
}

// startVM boots QEMU in op with the Debian amd64 netboot kernel and initrd,
// and waits until its init has started dropbear.
func startVM(t *testing.T, ctx context.Context, r *rig.Rig, qemu string, initrd []byte, memMiB int) *vm {
	t.Helper()
	return startVMOn(t, ctx, r, qemu, initrd, memMiB, freePort(t, r))
}

// startVMOn is startVM with the VM's SSH forwarded from port on op's
// loopback.
func startVMOn(t *testing.T, ctx context.Context, r *rig.Rig, qemu string, initrd []byte, memMiB, port int) *vm {
	t.Helper()
	dir := t.TempDir()
	ir := filepath.Join(dir, "initrd")
	writeFile(t, ir, initrd, 0o644)
	v := &vm{port: port, console: filepath.Join(dir, "ttyS0.log"), exited: make(chan error, 1)}
	cmd := r.Command(ctx, rig.Op, qemu,
		"-accel", "tcg", "-m", fmt.Sprint(memMiB), "-smp", "1",
		"-kernel", debianAmd64+"linux", "-initrd", ir,
		"-append", "console=ttyS0,115200n8 rdinit=/init",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22", v.port),
		"-device", "e1000,netdev=n0",
		"-nographic", "-monitor", "none", "-serial", "file:"+v.console)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.exited <- cmd.Wait() }()
	var once sync.Once
	v.stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			select {
			case <-v.exited:
			case <-time.After(10 * time.Second):
				t.Errorf("qemu (pid %d) did not exit when killed", cmd.Process.Pid)
			}
		})
	}
	t.Cleanup(v.stop)
	v.waitConsole(t, regexp.MustCompile(`NBSHIP-VM-READY`), 0)
	return v
}

func (v *vm) consoleText() string {
	b, _ := os.ReadFile(v.console)
	return string(b)
}

// waitConsole waits until the console, from offset on, matches re.
func (v *vm) waitConsole(t *testing.T, re *regexp.Regexp, offset int) {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		out := v.consoleText()
		if offset <= len(out) && re.MatchString(out[offset:]) {
			return
		}
		select {
		case err := <-v.exited:
			v.exited <- err
			t.Fatalf("qemu exited (%v) before the console showed %s:\n%s", err, re, consoleEnd(out, 3000))
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console did not show %s within %v:\n%s", re, bootTimeout, consoleEnd(out, 3000))
		}
	}
}

// kexecSetup is the rig, the VM's image and how the operator reaches
// the VM.
type kexecSetup struct {
	*setup
	pxe        *pxeImages
	identity   string // the operator's key
	knownHosts string // the rig's hosts and the VM's first key
}

// ssh runs a shell command on the VM as root with OpenSSH, from op.
func (k *kexecSetup) ssh(t *testing.T, ctx context.Context, v *vm, knownHosts, command string) string {
	t.Helper()
	out, err := k.r.Run(ctx, rig.Op, "ssh", "-F", "/dev/null", "-i", k.identity, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile="+knownHosts, "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes",
		"-p", fmt.Sprint(v.port), "root@127.0.0.1", command)
	if err != nil {
		t.Fatalf("ssh to the VM: %s: %v\n%s", command, err, out)
	}
	return out
}

type kexecResult struct {
	Host       string  `json:"host"`
	Instance   string  `json:"instance"`
	Generation string  `json:"generation"`
	Fetched    string  `json:"fetched"`
	How        string  `json:"how"`
	Answered   bool    `json:"answered"`
	Banner     string  `json:"banner"`
	HostKey    string  `json:"host_key"`
	Seconds    float64 `json:"seconds"`
}

// kexec runs nbship kexec on op against the VM.
func (k *kexecSetup) kexec(t *testing.T, ctx context.Context, v *vm, knownHosts, instance string, extra ...string) (stdout, stderr string, err error) {
	t.Helper()
	args := append([]string{"kexec", fmt.Sprintf("root@127.0.0.1:%d", v.port), "--config", k.config, "--instance", instance,
		"--known-hosts", k.r.KnownHosts, "--known-hosts", knownHosts, "-i", k.identity, "--timeout", "4m", "--json"}, extra...)
	return k.run(t, ctx, args...)
}

// publishImage publishes kernel (a path) and initrd (bytes, or a file of
// size bytes when initrd is nil) as instance's new generation on pxe.
func (k *kexecSetup) publishImage(t *testing.T, ctx context.Context, instance, system, kernelFile, kernel string, initrd []byte, size int64, args ...string) {
	t.Helper()
	d, err := os.MkdirTemp(k.pxe.dir, instance+"-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	copyFile(t, kernel, filepath.Join(d, kernelFile), 0o644)
	ir := filepath.Join(d, "initrd")
	if initrd != nil {
		writeFile(t, ir, initrd, 0o644)
	} else {
		// A cpio header, then zeros: what counts here is its size.
		writeFile(t, ir, []byte("070701"), 0o644)
		if err := os.Truncate(ir, size); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf("#!ipxe\nkernel %s initrd=initrd console=ttyS0,115200n8 rdinit=/init %s ${cmdline}\ninitrd initrd\nboot\n", kernelFile, strings.Join(args, " "))
	writeFile(t, filepath.Join(d, "netboot.ipxe"), []byte(script), 0o644)
	out, err := k.pxe.command(ctx, "image", "publish", "--pxe-dir", k.r.PXEDir, "--instance", instance, "--system", system, "--keep", "2", d).CombinedOutput()
	if err != nil {
		t.Fatalf("image publish %s on pxe: %v\n%s", instance, err, out)
	}
	os.RemoveAll(d)
}

// refused checks that nbship kexec failed with exit status 65 and one
// line naming want, and that it left nothing on the VM or the PXE host.
func (k *kexecSetup) refused(t *testing.T, ctx context.Context, v *vm, knownHosts, what string, err error, stderr string, want ...string) {
	t.Helper()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 65 {
		t.Errorf("%s: nbship kexec = %v, want exit status 65\n%s", what, err, stderr)
	}
	line := lastErrorLine(stderr)
	t.Logf("%s: %s", what, line)
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("%s: nbship kexec said %q, want it to name %q\n%s", what, line, w, stderr)
		}
	}
	if left := k.ssh(t, ctx, v, knownHosts, "ls -d /tmp/nbship-kexec-* 2>/dev/null; ps | grep -c '[k]exec-end' || true"); strings.TrimSpace(left) != "0" {
		t.Errorf("%s: left on the VM: %q", what, left)
	}
	noNbshipLeft(t, k.r, rig.PXE)
}

func randomMarker() string {
	var b [8]byte
	rand.Read(b[:])
	return "NBSHIP-KEXEC-MARKER-" + hex.EncodeToString(b[:])
}

// nbship kexec boots the published m2.xlarge.x86 image on a running VM,
// and refuses, before loading anything, a kernel of another architecture,
// an image larger than the VM's memory allows, a VM without kexec-tools,
// a kernel in lockdown and one with kexec_load_disabled. The new kernel's console shows the
// marker only the published initrd holds, and nbship sees the VM answer
// SSH again with its new host key. The files come from nginx on the PXE
// host, and through the operator when that URL is unreachable.
func TestKexecPublishedImage(t *testing.T) {
	qemu := needQEMU(t)
	needKexecTools(t)
	const bigInst, slowInst = "kexec-big", "kexec-slow"
	s := newSetup(t, "m2.xlarge.x86", "baseURL         "+rigHTTPURL(t), "profile         "+bigInst+" x86_64-linux", "profile         "+slowInst+" x86_64-linux")
	ctx := mustCtx(t, 10*time.Minute)
	k := &kexecSetup{setup: s, pxe: newPXEImages(t, s.r), identity: filepath.Join(s.r.OpHome, ".ssh", "id_ed25519")}
	pub, err := os.ReadFile(k.identity + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	img := buildVMImage(t, pub)

	// The slots: the test image, an arm64 kernel, an image too large.
	markerA, markerB := randomMarker(), randomMarker()
	k.publishImage(t, ctx, "c2.large.arm", "aarch64-linux", "Image", debianArm64+"linux", markerInitrd(t, img.base, markerA), 0)
	k.publishImage(t, ctx, bigInst, "x86_64-linux", "bzImage", debianAmd64+"linux", nil, 400<<20)
	k.publishImage(t, ctx, "m2.xlarge.x86", "x86_64-linux", "bzImage", debianAmd64+"linux", markerInitrd(t, img.base, markerA), 0)

	v := startVM(t, ctx, s.r, qemu, img.base, 1024)
	kh := filepath.Join(s.dir, "vm_known_hosts")
	writeFile(t, kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s\n", v.port, img.hostKey)), 0o644)
	// dropbear answers its first login once the kernel's random pool is
	// ready, which takes a while emulated; OpenSSH waits for it.
	k.ssh(t, ctx, v, kh, "true")

	_, stderr, err := k.kexec(t, ctx, v, kh, "c2.large.arm")
	k.refused(t, ctx, v, kh, "arm64 kernel", err, stderr, "refused", "aarch64-linux", "x86_64")

	_, stderr, err = k.kexec(t, ctx, v, kh, bigInst)
	k.refused(t, ctx, v, kh, "image too large", err, stderr, "refused", "MemTotal", "MiB")

	k.ssh(t, ctx, v, kh, "mv /bin/kexec /bin/kexec.away")
	_, stderr, err = k.kexec(t, ctx, v, kh, "m2.xlarge.x86")
	k.refused(t, ctx, v, kh, "no kexec-tools", err, stderr, "refused", "kexec-tools is not installed")
	k.ssh(t, ctx, v, kh, "mv /bin/kexec.away /bin/kexec")
	if strings.Contains(v.consoleText(), markerA) {
		t.Fatalf("the marker is on the console before any kexec")
	}

	// The image, fetched from nginx.
	accessLog := filepath.Join(s.r.Dir, "pxe", "nginx", "logs", "access.log")
	logStart := fileSize(accessLog)
	offset := len(v.consoleText())
	stdout, stderr, err := k.kexec(t, ctx, v, kh, "m2.xlarge.x86")
	if err != nil {
		t.Fatalf("nbship kexec: %v\n%s", err, stderr)
	}
	t.Logf("nbship kexec:\n%s%s", stderr, stdout)
	res := parseJSON[kexecResult](t, stdout)
	v.waitConsole(t, regexp.MustCompile(regexp.QuoteMeta(markerA)), offset)
	if !res.Answered || res.Fetched != "url" || res.How != "kexec -e" || !strings.HasPrefix(res.Banner, "SSH-2.0-dropbear") {
		t.Errorf("nbship kexec = %+v, want answered, fetched by url, kexec -e, a dropbear banner", res)
	}
	log := readFrom(t, accessLog, logStart)
	for _, f := range []string{"bzImage", "initrd"} {
		if !regexp.MustCompile(`"GET /hydra-m2\.xlarge\.x86/` + f + ` HTTP/1\.1" 200 .*Go-http-client`).MatchString(log) {
			t.Errorf("nginx access log has no GET of %s by the VM:\n%s", f, log)
		}
	}
	// The VM's new key is the one nbship reported.
	kh2 := filepath.Join(s.dir, "vm_known_hosts2")
	k.ssh(t, ctx, v, kh2, "true")
	fp, err := s.r.Run(ctx, rig.Op, "ssh-keygen", "-l", "-f", kh2)
	if err != nil || res.HostKey == "" || !strings.Contains(fp, res.HostKey) {
		t.Errorf("nbship kexec reported host key %q; the VM offers %s (%v)", res.HostKey, fp, err)
	}
	noNbshipLeft(t, s.r, rig.PXE)

	// The operator interrupts while the files go through it: the end
	// on the VM stops, removes what it received and loads nothing; the
	// VM goes on running the same system.
	k.publishImage(t, ctx, slowInst, "x86_64-linux", "bzImage", debianAmd64+"linux", nil, 300<<20)
	st := s.start(t, ctx, "kexec", fmt.Sprintf("root@127.0.0.1:%d", v.port), "--config", k.config, "--instance", slowInst, "--fetch", "controller",
		"--known-hosts", s.r.KnownHosts, "--known-hosts", kh2, "-i", k.identity)
	for {
		select {
		case err := <-st.done:
			t.Fatalf("nbship kexec ended (%v) before the files were seen arriving:\n%s", err, st.stderr.String())
		default:
		}
		got := k.ssh(t, ctx, v, kh2, `n=0; for f in /tmp/nbship-kexec-*/*; do [ -f "$f" ] && n=$((n + $(wc -c <"$f"))); done; echo $n`)
		if n, _ := strconv.Atoi(strings.TrimSpace(got)); n > 1<<20 {
			break
		}
	}
	st.cmd.Process.Signal(os.Interrupt)
	if err := st.wait(t, time.Minute); err == nil || st.cmd.ProcessState.ExitCode() != 130 {
		t.Errorf("interrupted nbship kexec = %v, want exit status 130\n%s", err, st.stderr.String())
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		left := k.ssh(t, ctx, v, kh2, "ls -d /tmp/nbship-kexec-* 2>/dev/null; ps | grep -c '[k]exec-end' || true")
		if strings.TrimSpace(left) == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the end did not stop and clean up after the operator's Ctrl-C: %q\n%s", left, st.stderr.String())
		}
		time.Sleep(time.Second)
	}
	if pids, err := s.r.Processes(rig.PXE, "cat"); err != nil || len(pids) > 0 {
		t.Errorf("cat processes left on pxe: %v, %v", pids, err)
	}

	// Again, with the PXE host's URL unreachable from the VM: the files
	// come through the operator, from the generation published now,
	// whose kernel runs in lockdown.
	k.publishImage(t, ctx, "m2.xlarge.x86", "x86_64-linux", "bzImage", debianAmd64+"linux", markerInitrd(t, img.base, markerB), 0, "lockdown=integrity")
	offset = len(v.consoleText())
	stdout, stderr, err = k.kexec(t, ctx, v, kh2, "m2.xlarge.x86", "--base-url", "http://10.0.2.2:9/")
	if err != nil {
		t.Fatalf("nbship kexec with an unreachable URL: %v\n%s", err, stderr)
	}
	t.Logf("nbship kexec, URL unreachable:\n%s", stderr)
	res = parseJSON[kexecResult](t, stdout)
	v.waitConsole(t, regexp.MustCompile(regexp.QuoteMeta(markerB)), offset)
	if !res.Answered || res.Fetched != "controller" || !strings.Contains(stderr, "through this machine") {
		t.Errorf("nbship kexec = %+v, want answered, fetched through the controller\n%s", res, stderr)
	}

	// A kernel in lockdown loads only signed kernels.
	kh3 := filepath.Join(s.dir, "vm_known_hosts3")
	if got := k.ssh(t, ctx, v, kh3, "cat /sys/kernel/security/lockdown"); !strings.Contains(got, "[integrity]") {
		t.Fatalf("the VM's kernel is not in lockdown: %q", got)
	}
	_, stderr, err = k.kexec(t, ctx, v, kh3, "m2.xlarge.x86")
	k.refused(t, ctx, v, kh3, "lockdown", err, stderr, "refused", "lockdown (integrity")

	// A kernel with kexec_load_disabled: it stays so until the next boot.
	k.ssh(t, ctx, v, kh3, "echo 1 >/proc/sys/kernel/kexec_load_disabled")
	_, stderr, err = k.kexec(t, ctx, v, kh3, "m2.xlarge.x86")
	k.refused(t, ctx, v, kh3, "kexec_load_disabled", err, stderr, "refused", "kexec_load_disabled is 1")

	v.stop()
	if pids, err := s.r.Processes(rig.Op, "qemu-system-x86_64"); err != nil || len(pids) > 0 {
		t.Errorf("qemu processes left in op: %v, %v", pids, err)
	}
}

// rigHTTPURL is nginx's base URL as op, and so the VM, reaches it.
func rigHTTPURL(t *testing.T) string {
	return rig.Require(t).HTTPURL
}
