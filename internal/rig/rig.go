// Package rig gives tests the three-host test rig of rig/rig.sh: an operator
// (op), an aarch64 build host (build) and a PXE web server (pxe), each in its
// own network and mount namespace with its own Nix store, real sshd on build
// and pxe, and nginx on pxe.
//
// Use it from a test package as
//
//	func TestMain(m *testing.M) { rig.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		r := rig.Require(t)
//		cmd := r.Command(ctx, "op", "ssh", append(r.SSHArgs(), "builder", "uname", "-m")...)
//		...
//	}
//
// There is one rig per machine. The first Require in a test process takes an
// exclusive lock (held until the process exits), so go test's parallel
// package processes take turns: a second package waits for the first to
// finish. The rig is brought up once per process and torn down by Main
// (unless NBSHIP_RIG_KEEP=1, handy for poking at it after a failure).
//
// Commands run on op get HOME set to the operator's home (Rig.OpHome). The
// real OpenSSH client ignores HOME when looking for ~/.ssh (it asks the
// password database), so anything that runs `ssh` or `nix-copy-closure` on op
// must pass SSHArgs() (or NIX_SSHOPTS=Rig.SSHOpts).
package rig

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
)

// Hosts of the rig.
const (
	Op    = "op"
	Build = "build"
	PXE   = "pxe"
)

// LockPath is the machine-wide lock shared with rig.sh.
const LockPath = "/run/lock/nbship-rig.lock"

// Rig describes the running rig. The fields come from `rig.sh env`.
type Rig struct {
	Dir           string // state directory (RIG_DIR)
	OpHome        string // the operator's HOME on op
	Config        string // builders.conf for the operator
	PXEDir        string // pxeDir on pxe, served by nginx
	HTTPURL       string // nginx base URL as seen from op, ending in /
	BuildAddr     string // build host's address as seen from op
	PXEAddr       string // PXE host's address as seen from op
	PXEDirectAddr string // PXE host's address as seen from build (direct link)
	KnownHosts    string // the operator's known_hosts
	SSHOpts       string // options for OpenSSH's ssh as the operator (NIX_SSHOPTS)

	script string // path of rig.sh
}

var (
	mu        sync.Mutex
	current   *Rig
	upErr     error
	attempted bool // this process ran `rig.sh up` (so Main tears down)
	lockFile  *os.File
)

// Require returns the running rig, bringing it up on first use in this test
// process. It skips the test when not root or when a needed tool is missing,
// unless NBSHIP_REQUIRE_RIG=1, in which case it fails the test instead.
func Require(t testing.TB) *Rig {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if current != nil {
		return current
	}
	if upErr != nil {
		t.Fatalf("rig: %v", upErr)
	}
	if reason := missing(); reason != "" {
		testbin.Missing(t, "rig: %s", reason)
	}
	script, err := scriptPath()
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	if err := takeLock(t); err != nil {
		upErr = err
		t.Fatalf("rig: %v", err)
	}
	start := time.Now()
	attempted = true
	if out, err := runScript(script, 3*time.Minute, "up"); err != nil {
		upErr = fmt.Errorf("rig.sh up: %v\n%s", err, out)
		t.Fatalf("rig: %v", upErr)
	}
	r, err := load(script)
	if err != nil {
		upErr = err
		t.Fatalf("rig: %v", err)
	}
	t.Logf("rig: up in %v (%s)", time.Since(start).Round(time.Millisecond), r.Dir)
	current = r
	return r
}

// Main runs the tests and tears the rig down if this process brought it up.
// Each of cleanups runs after the tests, before the process exits (a
// deferred call in TestMain would not: Main ends with os.Exit).
func Main(m *testing.M, cleanups ...func()) {
	code := m.Run()
	for _, c := range cleanups {
		c()
	}
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "rig: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func teardown() error {
	mu.Lock()
	defer mu.Unlock()
	if !attempted || os.Getenv("NBSHIP_RIG_KEEP") == "1" {
		return nil
	}
	script, err := scriptPath()
	if err != nil {
		return err
	}
	current = nil
	attempted = false
	if out, err := runScript(script, 2*time.Minute, "down"); err != nil {
		return fmt.Errorf("rig.sh down: %v\n%s", err, out)
	}
	return nil
}

// missing names the first prerequisite that is not there, or returns "".
func missing() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, mounts, sshd)"
	}
	for _, tool := range []string{"nsenter", "unshare", "ip", "tc", "sshd", "ssh", "ssh-keygen",
		"nginx", "nix-store", "nix-daemon", "nix-instantiate", "curl", "flock", "setsid"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Sprintf("%s not found (run scripts/deps.sh)", tool)
		}
	}
	if !binfmtReady() {
		return "linux/arm64 programs cannot run: binfmt qemu-aarch64 is not enabled and qemu-user-static/binfmt-support are missing (run scripts/deps.sh)"
	}
	return ""
}

// binfmtReady reports whether arm64 binaries run, or can be made to run by
// rig.sh up (which mounts binfmt_misc and enables qemu-aarch64 as needed).
func binfmtReady() bool {
	if b, err := os.ReadFile("/proc/sys/fs/binfmt_misc/qemu-aarch64"); err == nil &&
		strings.HasPrefix(string(b), "enabled") {
		return true
	}
	if _, err := os.Stat("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"); err != nil {
		return false
	}
	_, err := lookTool("update-binfmts")
	return err == nil
}

func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// scriptPath finds rig/rig.sh: $NBSHIP_RIG_SH, else next to this source file,
// else above the working directory.
func scriptPath() (string, error) {
	if p := os.Getenv("NBSHIP_RIG_SH"); p != "" {
		return p, nil
	}
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok {
		candidates = append(candidates, filepath.Join(filepath.Dir(file), "..", "..", "rig", "rig.sh"))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			candidates = append(candidates, filepath.Join(dir, "rig", "rig.sh"))
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return filepath.Clean(c), nil
		}
	}
	return "", errors.New("rig/rig.sh not found (set NBSHIP_RIG_SH)")
}

// takeLock takes the machine-wide rig lock for the rest of the process's life.
func takeLock(t testing.TB) error {
	if lockFile != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(LockPath), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(LockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Logf("rig: waiting for %s (another process is using the rig)", LockPath)
		for {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
			if err != syscall.EINTR {
				break
			}
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("lock %s: %w", LockPath, err)
		}
	}
	lockFile = f // never closed: the lock ends with the process
	return nil
}

func runScript(script string, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, args...)
	cmd.Env = append(os.Environ(), "NBSHIP_RIG_LOCKED=1")
	cmd.WaitDelay = 5 * time.Second
	return cmd.CombinedOutput()
}

// load reads `rig.sh env`.
func load(script string) (*Rig, error) {
	out, err := runScript(script, time.Minute, "env")
	if err != nil {
		return nil, fmt.Errorf("rig.sh env: %v\n%s", err, out)
	}
	env, err := parseEnv(out)
	if err != nil {
		return nil, err
	}
	r := &Rig{script: script}
	for key, dst := range map[string]*string{
		"RIG_DIR": &r.Dir, "RIG_OP_HOME": &r.OpHome, "RIG_CONFIG": &r.Config,
		"RIG_PXE_DIR": &r.PXEDir, "RIG_HTTP_URL": &r.HTTPURL, "RIG_BUILD_ADDR": &r.BuildAddr,
		"RIG_PXE_ADDR": &r.PXEAddr, "RIG_PXE_DIRECT_ADDR": &r.PXEDirectAddr,
		"RIG_KNOWN_HOSTS": &r.KnownHosts, "RIG_SSH_OPTS": &r.SSHOpts,
	} {
		v, ok := env[key]
		if !ok {
			return nil, fmt.Errorf("rig.sh env: no %s in\n%s", key, out)
		}
		*dst = v
	}
	return r, nil
}

// parseEnv parses KEY='value' lines (shell single quoting).
func parseEnv(out []byte) (map[string]string, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("rig.sh env: bad line %q", line)
		}
		if len(val) >= 2 && val[0] == '\'' && val[len(val)-1] == '\'' {
			val = strings.ReplaceAll(val[1:len(val)-1], `'\''`, `'`)
		}
		env[key] = val
	}
	return env, sc.Err()
}

// SSHArgs returns SSHOpts as arguments for OpenSSH's ssh on op.
func (r *Rig) SSHArgs() []string { return strings.Fields(r.SSHOpts) }

// SSHAlias is the operator's ssh alias of a host ("builder" or "pxe").
func SSHAlias(host string) string {
	if host == Build {
		return "builder"
	}
	return host
}

// AnchorPID returns the pid of the process holding host's namespaces.
func (r *Rig) AnchorPID(host string) (int, error) {
	switch host {
	case Op, Build, PXE:
	default:
		return 0, fmt.Errorf("rig: unknown host %q (want op, build or pxe)", host)
	}
	b, err := os.ReadFile(filepath.Join(r.Dir, host, "anchor.pid"))
	if err != nil {
		return 0, fmt.Errorf("rig: %s is not up: %w", host, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("rig: bad anchor pid for %s: %w", host, err)
	}
	return pid, nil
}

// wrap runs after entering a host's namespaces: entering a mount namespace
// resets the cwd to its root, so nsenter --wd=. keeps a handle on the caller's
// cwd and this puts the same path back in the new namespace's terms. The
// first argument, if not empty, becomes HOME.
const wrap = `if [ -n "$1" ]; then HOME=$1; export HOME; fi; shift
if [ -n "${PWD:-}" ] && [ "$PWD" -ef . ]; then cd "$PWD" 2>/dev/null || :; fi
exec "$@"`

// Command returns a command that runs name with args inside host's network
// and mount namespaces (host is op, build or pxe), as root. The working
// directory (cmd.Dir, default the caller's) is kept; on op, HOME is the
// operator's home (wrap the command in `env HOME=...` to change it). Errors
// finding the host surface from Start.
func (r *Rig) Command(ctx context.Context, host string, name string, args ...string) *exec.Cmd {
	pid, err := r.AnchorPID(host)
	nsenter, lerr := lookTool("nsenter")
	home := ""
	if host == Op {
		home = r.OpHome
	}
	argv := append([]string{"-t", strconv.Itoa(pid), "-n", "-m", "--wd=.", "--",
		"/bin/sh", "-c", wrap, "rig-exec", home, name}, args...)
	cmd := exec.CommandContext(ctx, nsenter, argv...)
	if err == nil {
		err = lerr
	}
	if err != nil {
		cmd.Err = err
	}
	return cmd
}

// Run runs a command on host and returns its combined output; the error
// includes the output.
func (r *Rig) Run(ctx context.Context, host string, name string, args ...string) (string, error) {
	out, err := r.Command(ctx, host, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s on %s: %v: %s", name, host, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// HTTPGet fetches url from inside op's namespaces (as a booting machine on
// the operator's network would) with curl and returns status and body.
func (r *Rig) HTTPGet(ctx context.Context, url string) (status int, body []byte, err error) {
	f, err := os.CreateTemp("", "rig-http-*")
	if err != nil {
		return 0, nil, err
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	var stderr bytes.Buffer
	cmd := r.Command(ctx, Op, "curl", "-sS", "--max-time", "300", "-o", name, "-w", "%{http_code}", url)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %v: %s", url, err, bytes.TrimSpace(stderr.Bytes()))
	}
	status, err = strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || status == 0 {
		return 0, nil, fmt.Errorf("GET %s: no HTTP status (%q): %s", url, out, bytes.TrimSpace(stderr.Bytes()))
	}
	body, err = os.ReadFile(name)
	return status, body, err
}

// proc is one process seen in /proc.
type proc struct {
	pid  int
	comm string
	argv []string
}

// procs lists the processes whose network namespace is host's.
func (r *Rig) procs(host string) ([]proc, error) {
	pid, err := r.AnchorPID(host)
	if err != nil {
		return nil, err
	}
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("rig: anchor of %s is gone: %w", host, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []proc
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p))
		if err != nil || ns != want {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err != nil || len(raw) == 0 { // gone, zombie or kernel thread
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		out = append(out, proc{
			pid:  p,
			comm: strings.TrimSpace(string(comm)),
			argv: strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"),
		})
	}
	return out, nil
}

// Cmdlines returns the argv (NUL turned into space) of every process in
// host's network namespace; tests use it to look for secrets in argv.
func (r *Rig) Cmdlines(host string) ([]string, error) {
	ps, err := r.procs(host)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, strings.Join(p.argv, " "))
	}
	return out, nil
}

// Processes returns the pids of processes in host's network namespace whose
// comm or argv[0] basename is comm. A linux/arm64 program run through
// qemu-user by binfmt_misc shows the interpreter as argv[0], followed by the
// program's path and its own argv[0]; those match too.
func (r *Rig) Processes(host, comm string) ([]int, error) {
	ps, err := r.procs(host)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range ps {
		if matches(p, comm) {
			pids = append(pids, p.pid)
		}
	}
	return pids, nil
}

func matches(p proc, comm string) bool {
	if p.comm == comm || (len(comm) > 15 && p.comm == comm[:15]) { // comm is cut to 15 bytes
		return true
	}
	if len(p.argv) == 0 {
		return false
	}
	if filepath.Base(p.argv[0]) == comm {
		return true
	}
	if b := filepath.Base(p.argv[0]); strings.HasPrefix(b, "qemu-") || strings.Contains(b, "-binfmt") {
		for _, a := range p.argv[1:min(3, len(p.argv))] {
			if filepath.Base(a) == comm {
				return true
			}
		}
	}
	return false
}

func (r *Rig) rigsh(args ...string) error {
	if out, err := runScript(r.script, 2*time.Minute, args...); err != nil {
		return fmt.Errorf("rig.sh %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Shape limits both directions of the build–pxe link to rate (tc syntax, e.g.
// "100mbit", "1gbit"); "off" removes the limit.
func (r *Rig) Shape(rate string) error { return r.rigsh("shape", rate) }

// Link sets a link ("build-pxe", also "op-build", "op-pxe") down or up on
// both ends. With build-pxe down, build cannot reach PXEDirectAddr (connect
// fails at once: no route) while op still reaches pxe.
func (r *Rig) Link(name string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return r.rigsh("link", name, state)
}

// Rekey gives host ("build" or "pxe") a new ssh host key and restarts its
// sshd. The operator's known_hosts keeps the old key until Trust.
func (r *Rig) Rekey(host string) error { return r.rigsh("rekey", host) }

// Trust rewrites the operator's known_hosts with the hosts' current keys.
func (r *Rig) Trust() error { return r.rigsh("trust") }

// NixConf gives host ("build" or "pxe") the nix.conf the rig starts with
// plus the lines of extra (later settings override earlier ones), and
// restarts its nix-daemon to read it; extra "" restores the default.
func (r *Rig) NixConf(host, extra string) error {
	if extra == "" {
		return r.rigsh("nixconf", host)
	}
	f, err := os.CreateTemp("", "nbship-nixconf-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.WriteString(extra)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return r.rigsh("nixconf", host, f.Name())
}

// Delay routes all three links through the rig's router namespace (rig.sh
// delay): every packet waits rtt/2 in each direction, and each direction
// carries at most rate (tc syntax, e.g. "100mbit"; "0" for no limit). TCP
// sees the round-trip time itself: handshakes and ACKs cross the delay
// too. Addresses and device names do not change; Undelay restores the
// direct links.
func (r *Rig) Delay(rtt time.Duration, rate string) error {
	return r.rigsh("delay", strconv.FormatInt(rtt.Milliseconds(), 10), rate)
}

// Undelay puts the direct links back (a no-op when they are).
func (r *Rig) Undelay() error { return r.rigsh("undelay") }
