package rig

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
)

func TestMain(m *testing.M) { Main(m) }

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ssh runs the real OpenSSH client on op as the operator.
func ssh(ctx context.Context, r *Rig, host string, command string) (string, error) {
	args := append(r.SSHArgs(), SSHAlias(host), command)
	return r.Run(ctx, Op, "ssh", args...)
}

func TestEnv(t *testing.T) {
	r := Require(t)
	for name, v := range map[string]string{"BuildAddr": r.BuildAddr, "PXEAddr": r.PXEAddr, "PXEDirectAddr": r.PXEDirectAddr} {
		want := map[string]string{"BuildAddr": "10.77.1.2", "PXEAddr": "10.77.2.2", "PXEDirectAddr": "10.77.3.2"}[name]
		if v != want {
			t.Errorf("%s = %q, want %q", name, v, want)
		}
	}
	if !strings.HasSuffix(r.HTTPURL, "/") {
		t.Errorf("HTTPURL %q does not end in /", r.HTTPURL)
	}
	conf, err := os.ReadFile(r.Config)
	if err != nil {
		t.Fatal(err)
	}
	want := "buildHost       root@builder\n" +
		"pxeHost         netboot@pxe\n" +
		"pxeDir          " + r.PXEDir + "/\n" +
		"opensslServer   10.77.3.2\n" +
		"opensslPort     61616\n"
	if string(conf) != want {
		t.Errorf("builders.conf:\n%s\nwant:\n%s", conf, want)
	}
	st, err := os.Stat(r.Dir)
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("state dir %s: %v %v, want mode 0755", r.Dir, st.Mode(), err)
	}
	out, err := r.Run(ctxFor(t, time.Minute), Op, "sh", "-c", `echo "$HOME"`)
	if err != nil || strings.TrimSpace(out) != r.OpHome {
		t.Errorf("HOME on op = %q (%v), want %s", out, err, r.OpHome)
	}
}

func TestCommandKeepsWorkingDirectory(t *testing.T) {
	r := Require(t)
	dir := t.TempDir()
	cmd := r.Command(ctxFor(t, time.Minute), Build, "pwd")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != dir {
		t.Errorf("pwd on build with Dir=%s: %q %v", dir, out, err)
	}
	// The exit status is the command's.
	err = r.Command(ctxFor(t, time.Minute), PXE, "sh", "-c", "exit 7").Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Errorf("exit 7 on pxe: %v", err)
	}
}

func TestSSHToBuilderIsAarch64Root(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, time.Minute)
	out, err := ssh(ctx, r, Build, `uname -m; id -un; echo "$NIX_REMOTE"; uname -s`)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out); len(got) != 4 || got[0] != "aarch64" || got[1] != "root" || got[2] != "daemon" || got[3] != "Linux" {
		t.Errorf("builder: uname -m, id -un, $NIX_REMOTE, uname -s = %q, want aarch64 root daemon Linux", out)
	}
	// op and pxe are what they are.
	if out, err := r.Run(ctx, Op, "uname", "-m"); err != nil || strings.TrimSpace(out) != runtime2uname() {
		t.Errorf("uname -m on op = %q %v", out, err)
	}
}

func runtime2uname() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

func TestSSHToPXEAsNetbootThroughDaemon(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, time.Minute)
	out, err := ssh(ctx, r, PXE, `id -un; echo "$HOME"; nix-store --version`)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || lines[0] != "netboot" || !strings.HasPrefix(lines[2], "nix-store (Nix)") {
		t.Fatalf("pxe: %q", out)
	}
	// netboot cannot write /nix/store itself: a successful add went through
	// pxe's nix-daemon.
	p, err := ssh(ctx, r, PXE, `printf %s `+randomHex(t)+` > "$HOME/f" && nix-store --add "$HOME/f"`)
	if err != nil {
		t.Fatal(err)
	}
	p = strings.TrimSpace(p)
	if _, err := r.Run(ctx, PXE, "nix-store", "--check-validity", p); err != nil {
		t.Errorf("%s added by netboot is not valid on pxe: %v", p, err)
	}
	if _, err := r.Run(ctx, Build, "nix-store", "--check-validity", p); err == nil {
		t.Errorf("%s added on pxe is valid on build", p)
	}
}

func randomHex(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func TestStoresAreSeparate(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, time.Minute)
	f := filepath.Join(t.TempDir(), "rig-store-test")
	if err := os.WriteFile(f, []byte(randomHex(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := ssh(ctx, r, Build, "nix-store --add "+f)
	if err != nil {
		t.Fatal(err)
	}
	p = strings.TrimSpace(p)
	if !strings.HasPrefix(p, "/nix/store/") {
		t.Fatalf("nix-store --add on build printed %q", p)
	}
	if _, err := r.Run(ctx, Build, "nix-store", "--check-validity", p); err != nil {
		t.Errorf("not valid on build: %v", err)
	}
	for _, h := range []string{PXE, Op} {
		if _, err := r.Run(ctx, h, "nix-store", "--check-validity", p); err == nil {
			t.Errorf("%s added on build is valid on %s", p, h)
		}
		if _, err := r.Run(ctx, h, "test", "-e", p); err == nil {
			t.Errorf("%s added on build exists on %s", p, h)
		}
	}
	if _, err := os.Stat(p); err == nil {
		t.Errorf("%s added on build exists on the real machine", p)
	}
}

func TestNginxServesPXEDir(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, time.Minute)
	gen := filepath.Join(r.PXEDir, "rig-test.gen-1")
	link := filepath.Join(r.PXEDir, "rig-test")
	t.Cleanup(func() { os.RemoveAll(gen); os.Remove(link) })
	if err := os.MkdirAll(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	body := []byte("#!ipxe\n" + randomHex(t) + "\n")
	if err := os.WriteFile(filepath.Join(gen, "netboot.ipxe"), body, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("rig-test.gen-1", link); err != nil {
		t.Fatal(err)
	}
	status, got, err := r.HTTPGet(ctx, r.HTTPURL+"rig-test/netboot.ipxe")
	if err != nil || status != 200 || !bytes.Equal(got, body) {
		t.Errorf("GET through the symlink: %d %q %v", status, got, err)
	}
	if status, _, err := r.HTTPGet(ctx, r.HTTPURL+"rig-test/missing"); err != nil || status != 404 {
		t.Errorf("GET missing file: %d %v, want 404", status, err)
	}
	if status, _, err := r.HTTPGet(ctx, r.HTTPURL); err != nil || status == 200 {
		t.Errorf("GET / (autoindex off): %d %v, want no listing", status, err)
	}
	// The builder sees the same server on the direct link.
	out, err := r.Run(ctx, Build, "curl", "-sS", "--max-time", "10", "http://"+r.PXEDirectAddr+"/rig-test/netboot.ipxe")
	if err != nil || out != string(body) {
		t.Errorf("GET from build over the direct link: %q %v", out, err)
	}
}

func goTool(t *testing.T) string {
	for _, p := range []string{filepath.Join(runtime.GOROOT(), "bin", "go"), "/usr/local/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	testbin.Missing(t, "no go tool to build an arm64 test program")
	return ""
}

// TestArm64ProgramOnBuild runs a linux/arm64 program on build (through
// qemu-user via binfmt_misc, inside build's mount namespace) and finds it
// with Processes and Cmdlines.
func TestArm64ProgramOnBuild(t *testing.T) {
	r := Require(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(`package main

import (
	"io"
	"os"
	"runtime"
)

func main() {
	os.Stdout.WriteString(runtime.GOARCH + "\n")
	io.Copy(io.Discard, os.Stdin)
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "rig-arm64-probe")
	build := exec.Command(goTool(t), "build", "-o", bin, src)
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0", "GO111MODULE=off", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx := ctxFor(t, 2*time.Minute)
	marker := "marker-" + randomHex(t)
	cmd := r.Command(ctx, Build, bin, marker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var pids []int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if pids, err = r.Processes(Build, "rig-arm64-probe"); err != nil {
			t.Fatal(err)
		}
		if len(pids) > 0 {
			break
		}
	}
	if len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Errorf("Processes(build, rig-arm64-probe) = %v, want [%d]", pids, cmd.Process.Pid)
	}
	if other, _ := r.Processes(Op, "rig-arm64-probe"); len(other) != 0 {
		t.Errorf("Processes(op, ...) = %v, want none", other)
	}
	lines, err := r.Cmdlines(Build)
	if err != nil {
		t.Fatal(err)
	}
	found := ""
	for _, l := range lines {
		if strings.Contains(l, marker) {
			found = l
		}
	}
	if found == "" {
		t.Errorf("Cmdlines(build) has no line with %s: %q", marker, lines)
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
	t.Logf("arm64 program under qemu-user: comm %q, argv %q", strings.TrimSpace(string(comm)), found)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(stdout.String()); got != "arm64" {
		t.Errorf("arm64 program printed %q, want arm64", got)
	}
}

// fetchSeconds times a download of path from pxe's direct address on build.
func fetchSeconds(t *testing.T, r *Rig, path string) float64 {
	out, err := r.Run(ctxFor(t, 2*time.Minute), Build, "curl", "-sS", "--max-time", "60", "-o", "/dev/null",
		"-w", "%{time_total}", "http://"+r.PXEDirectAddr+"/"+path)
	if err != nil {
		t.Fatal(err)
	}
	var s float64
	if _, err := fmt.Sscan(out, &s); err != nil {
		t.Fatalf("curl time %q: %v", out, err)
	}
	return s
}

func TestLinkAndShape(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, 2*time.Minute)
	t.Cleanup(func() {
		if err := r.Link("build-pxe", true); err != nil {
			t.Error(err)
		}
		if err := r.Shape("off"); err != nil {
			t.Error(err)
		}
	})
	if err := r.Link("build-pxe", false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := r.Run(ctx, Build, "curl", "-sS", "--max-time", "5", "http://"+r.PXEDirectAddr+"/"); err == nil {
		t.Errorf("pxe reachable from build with build-pxe down: %q", out)
	}
	t.Logf("direct path with the link down failed after %v", time.Since(start).Round(time.Millisecond))
	if status, _, err := r.HTTPGet(ctx, r.HTTPURL); err != nil || status == 0 {
		t.Errorf("op -> pxe with build-pxe down: %d %v", status, err)
	}
	if _, err := ssh(ctx, r, PXE, "true"); err != nil {
		t.Errorf("ssh op -> pxe with build-pxe down: %v", err)
	}
	if err := r.Link("build-pxe", true); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, Build, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "http://"+r.PXEDirectAddr+"/"); err != nil {
		t.Errorf("direct path after link up: %v", err)
	}

	// 8 MiB at 40 mbit/s (5 MB/s) takes ~1.7 s; unshaped it takes a few ms.
	big := filepath.Join(r.PXEDir, "rig-test-big")
	t.Cleanup(func() { os.Remove(big) })
	data := make([]byte, 8<<20)
	rand.Read(data)
	if err := os.WriteFile(big, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Shape("40mbit"); err != nil {
		t.Fatal(err)
	}
	shaped := fetchSeconds(t, r, "rig-test-big")
	if err := r.Shape("off"); err != nil {
		t.Fatal(err)
	}
	free := fetchSeconds(t, r, "rig-test-big")
	mbps := float64(len(data)) * 8 / shaped / 1e6
	t.Logf("8 MiB over build-pxe: %.2fs shaped to 40mbit (%.1f mbit/s), %.3fs unshaped", shaped, mbps, free)
	if mbps > 48 || mbps < 20 {
		t.Errorf("shaped to 40mbit, measured %.1f mbit/s", mbps)
	}
	if free >= shaped/2 {
		t.Errorf("unshaped transfer (%.3fs) not clearly faster than shaped (%.3fs)", free, shaped)
	}
	if err := r.Shape("fast"); err == nil {
		t.Errorf("Shape(fast) succeeded")
	}
}

func TestRekeyIsRefused(t *testing.T) {
	r := Require(t)
	ctx := ctxFor(t, 2*time.Minute)
	t.Cleanup(func() {
		if err := r.Trust(); err != nil {
			t.Error(err)
		}
	})
	if _, err := ssh(ctx, r, PXE, "true"); err != nil {
		t.Fatal(err)
	}
	if err := r.Rekey(PXE); err != nil {
		t.Fatal(err)
	}
	out, err := ssh(ctx, r, PXE, "true")
	if err == nil {
		t.Fatalf("ssh to pxe with a changed host key succeeded")
	}
	if !strings.Contains(out, "Host key verification failed") && !strings.Contains(out, "HOST IDENTIFICATION HAS CHANGED") {
		t.Errorf("ssh to pxe after rekey failed for another reason: %v", err)
	}
	if _, err := ssh(ctx, r, Build, "true"); err != nil {
		t.Errorf("build affected by rekey of pxe: %v", err)
	}
	if err := r.Trust(); err != nil {
		t.Fatal(err)
	}
	if _, err := ssh(ctx, r, PXE, "true"); err != nil {
		t.Errorf("ssh to pxe after Trust: %v", err)
	}
}

// leftovers lists what the rig may leave behind on the machine.
func leftovers(dir string) []string {
	var found []string
	if m, _ := filepath.Glob("/run/netns/nbs-*"); len(m) > 0 {
		found = append(found, fmt.Sprintf("namespaces %v", m))
	}
	if _, err := os.Stat(dir); err == nil {
		found = append(found, "state dir "+dir)
	}
	for _, l := range []string{"op-build", "build-op", "op-pxe", "pxe-op", "build-pxe", "pxe-build"} {
		if _, err := os.Stat("/sys/class/net/" + l); err == nil {
			found = append(found, "link "+l)
		}
	}
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == self {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.HasPrefix(cmdline, []byte("nbs-anchor-")) || bytes.Contains(cmdline, []byte(dir+"/")) {
			found = append(found, fmt.Sprintf("process %d %q", pid, bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		}
		// Mounts in any namespace, not just ours: a stray process could keep
		// a host's mount namespace (and its binds of the state dir) alive.
		mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if bytes.Contains(mi, []byte(dir+"/")) || bytes.Contains(mi, []byte("/run/netns/nbs-")) {
			found = append(found, fmt.Sprintf("mounts of the rig in the mount namespace of pid %d", pid))
		}
	}
	return found
}

// TestDownAndUpAfterCrash runs last: down leaves nothing behind, and up works
// after a crash that lost track of the running rig.
func TestDownAndUpAfterCrash(t *testing.T) {
	r := Require(t)
	mu.Lock()
	defer mu.Unlock()
	ctx := ctxFor(t, 3*time.Minute)

	// A process started inside a host must die with the rig too.
	stray := r.Command(ctx, Build, "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	defer stray.Process.Kill()
	start := time.Now()
	if out, err := runScript(r.script, 2*time.Minute, "down"); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	t.Logf("down took %v", time.Since(start).Round(time.Millisecond))
	if err := stray.Wait(); err == nil {
		t.Errorf("a process on build survived down")
	}
	if l := leftovers(r.Dir); len(l) > 0 {
		t.Errorf("after down: %s", strings.Join(l, "\n"))
	}
	if out, err := runScript(r.script, 2*time.Minute, "down"); err != nil {
		t.Errorf("second down: %v\n%s", err, out)
	}

	start = time.Now()
	if out, err := runScript(r.script, 3*time.Minute, "up"); err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	t.Logf("up from nothing took %v", time.Since(start).Round(time.Millisecond))

	// Crash: the rig loses its pid files; the old processes keep running.
	var old []int
	for _, h := range []string{Op, Build, PXE} {
		pid, err := r.AnchorPID(h)
		if err != nil {
			t.Fatal(err)
		}
		old = append(old, pid)
		os.Remove(filepath.Join(r.Dir, h, "anchor.pid"))
	}
	sshd, _ := r.Processes(Build, "sshd")
	start = time.Now()
	if out, err := runScript(r.script, 3*time.Minute, "up"); err != nil {
		t.Fatalf("up after crash: %v\n%s", err, out)
	}
	t.Logf("up over a crashed rig took %v", time.Since(start).Round(time.Millisecond))
	for _, pid := range append(old, sshd...) {
		if err := syscall.Kill(pid, 0); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !bytes.Contains(st, []byte(") Z ")) {
				t.Errorf("process %d of the crashed rig survived up", pid)
			}
		}
	}
	if out, err := ssh(ctx, r, Build, "uname -m"); err != nil || strings.TrimSpace(out) != "aarch64" {
		t.Errorf("builder after up over a crash: %q %v", out, err)
	}
}
