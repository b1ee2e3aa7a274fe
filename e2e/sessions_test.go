package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/rig"
)

// shellLog makes the login shells of the rig's SSH users (root on the
// build host, netboot on the PXE host) log each start, as a slow .bashrc
// (pyenv, conda, nvm) would cost one: bash, run by sshd for a command,
// reads ~/.bashrc. netboot's login shell is bash for the test's duration.
// count returns the starts on host since the last reset.
type shellLog struct {
	files map[string]string // host -> log file, as seen from here
}

func newShellLog(t *testing.T, r *rig.Rig) *shellLog {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash not found: %v (scripts/deps.sh installs it)", err)
	}
	if sh := loginShell(t, "root"); filepath.Base(sh) != "bash" {
		t.Fatalf("root's login shell is %s; this test counts bash's starts through ~/.bashrc", sh)
	}
	old := loginShell(t, "netboot")
	if out, err := exec.Command("usermod", "--shell", bash, "netboot").CombinedOutput(); err != nil {
		t.Fatalf("usermod --shell %s netboot: %v: %s", bash, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("usermod", "--shell", old, "netboot").CombinedOutput(); err != nil {
			t.Errorf("restoring netboot's shell %s: %v: %s", old, err, out)
		}
	})
	homes := map[string]string{rig.Build: filepath.Join(r.Dir, "build", "root"), rig.PXE: filepath.Join(r.Dir, "pxe", "home")}
	l := &shellLog{files: map[string]string{}}
	for host, home := range homes {
		rc := filepath.Join(home, ".bashrc")
		prev, err := os.ReadFile(rc)
		had := err == nil
		// Only shells sshd starts log: not the test's own bash.
		body := `[ -n "$SSH_CONNECTION" ] && echo "$$" >>"$HOME/.nbship-shell-starts"` + "\n"
		if err := os.WriteFile(rc, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if had {
				os.WriteFile(rc, prev, 0o644)
			} else {
				os.Remove(rc)
			}
			os.Remove(filepath.Join(home, ".nbship-shell-starts"))
		})
		l.files[host] = filepath.Join(home, ".nbship-shell-starts")
	}
	return l
}

func loginShell(t *testing.T, user string) string {
	t.Helper()
	out, err := exec.Command("getent", "passwd", user).Output()
	f := strings.Split(strings.TrimSpace(string(out)), ":")
	if err != nil || len(f) != 7 {
		t.Fatalf("getent passwd %s = %q, %v", user, out, err)
	}
	return f[6]
}

func (l *shellLog) reset(t *testing.T) {
	t.Helper()
	for _, f := range l.files {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
}

func (l *shellLog) count(t *testing.T, host string) int {
	t.Helper()
	b, err := os.ReadFile(l.files[host])
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// TestLoginShellStartsPerHost counts the login shell's starts on each host
// for each command that reaches hosts: at most twice per host (once to find
// nbship, once for the session all later steps go through), whatever the
// number of steps.
func TestLoginShellStartsPerHost(t *testing.T) {
	s := newSetup(t, "c2.large.arm")
	ctx := mustCtx(t, 10*time.Minute)
	l := newShellLog(t, s.r)

	// The first run may upload nbship: the upload's session goes on as
	// the agent, so that too is two starts.
	l.reset(t)
	stdout, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config, "--json")
	if err != nil {
		t.Fatalf("nbship aarch64: %v\n%s", err, stderr)
	}
	res := parseJSON[buildResult](t, stdout)
	uploads := strings.Count(stderr, "uploaded nbship")
	for _, h := range []string{rig.Build, rig.PXE} {
		t.Logf("nbship aarch64 (first run, %d uploads): %d shell starts on %s", uploads, l.count(t, h), h)
		if n := l.count(t, h); n < 1 || n > 2 {
			t.Errorf("nbship aarch64 (first run, %d uploads): %d shell starts on %s, want 1 or 2", uploads, n, h)
		}
	}
	if n := l.count(t, rig.Build) + l.count(t, rig.PXE); n == 0 {
		t.Fatal("no shell start logged at all: ~/.bashrc is not read for SSH commands here")
	}
	noNbshipLeft(t, s.r, rig.Build, rig.PXE)

	check := func(name string, hosts []string, run func() (string, error)) {
		t.Helper()
		l.reset(t)
		stderr, err := run()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, stderr)
		}
		if strings.Contains(stderr, "session of its own") {
			t.Errorf("%s fell back to a session per step:\n%s", name, stderr)
		}
		for _, h := range hosts {
			t.Logf("%s: %d shell starts on %s", name, l.count(t, h), h)
			if n := l.count(t, h); n > 2 || n < 1 {
				t.Errorf("%s: %d shell starts on %s, want 1 or 2", name, n, h)
			}
		}
		noNbshipLeft(t, s.r, hosts...)
	}

	drv := res.Drv // in op's store, which only op's mount namespace sees
	check("nbship aarch64 --drv (unchanged re-publish)", []string{rig.Build, rig.PXE}, func() (string, error) {
		_, stderr, err := s.run(t, ctx, "aarch64", "--config", s.config, "--drv", drv)
		return stderr, err
	})
	check("nbship image --host list", []string{rig.PXE}, func() (string, error) {
		_, stderr, err := s.run(t, ctx, "image", "list", "--host", "pxe", "--pxe-dir", s.r.PXEDir, "--instance", "c2.large.arm")
		return stderr, err
	})
	dest := filepath.Join(s.r.Dir, "pxe", "home", "sessions-"+filepath.Base(res.Out))
	t.Cleanup(func() { os.RemoveAll(dest) })
	check("nbship ship --dest", []string{rig.Build, rig.PXE}, func() (string, error) {
		cmd := s.r.Command(ctx, rig.Op, s.bin, "ship", "--config", s.config, "--dest", dest)
		cmd.Dir = s.dir
		cmd.Stdin = strings.NewReader(res.Out + "\n")
		var e strings.Builder
		cmd.Stderr = &e
		err := cmd.Run()
		return e.String(), err
	})

	const inst = "m2.xlarge.x86"
	x := newSetup(t, inst)
	check("nbship x86_64", []string{rig.PXE}, func() (string, error) {
		_, stderr, err := x.run(t, ctx, "x86_64", "--config", x.config)
		return stderr, err
	})
}
