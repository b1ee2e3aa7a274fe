package e2e

// nbship builders create on Hetzner, end to end: the fake hcloud API
// (provider/hetzner/hetznertest) serves inside the operator's network, and
// the server it makes is the QEMU VM of kexec_test.go, reached on a host
// forward of op's loopback. nbship makes the server, waits for its rescue
// system's SSH, trusts its host key on first use and boots the published
// image by kexec.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/rig"
	"github.com/nbship/nbship/provider/hetzner/hetznertest"
)

// listenIn opens a TCP listener on 127.0.0.1 inside host's network
// namespace, so that programs run there (rig.Command) reach it on their
// loopback. The listener stays in that namespace; this process does not.
func listenIn(t *testing.T, r *rig.Rig, host string) net.Listener {
	t.Helper()
	pid, err := r.AnchorPID(host)
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// setns changes the calling thread only: hold this goroutine on
		// it, and let it go only once it is back in its own namespace.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns into %s's network: %w", host, err)}
			return
		}
		l, lerr := net.Listen("tcp", "127.0.0.1:0")
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread stays locked: it ends with this goroutine
			// instead of running others in the wrong namespace.
			if l != nil {
				l.Close()
			}
			ch <- result{err: fmt.Errorf("setns back from %s's network: %w", host, err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{l, lerr}
	}()
	res := <-ch
	if res.err != nil {
		t.Fatal(res.err)
	}
	return res.l
}

// operatorHome is a HOME for nbship on op holding the operator's key
// (the one the VM lets in), an ssh config that names the PXE host and
// checks it against the rig's known_hosts, and an empty known_hosts.
func operatorHome(t *testing.T, r *rig.Rig) string {
	t.Helper()
	home := filepath.Join(t.TempDir(), "home")
	for _, f := range []string{"id_ed25519", "id_ed25519.pub"} {
		copyFile(t, filepath.Join(r.OpHome, ".ssh", f), filepath.Join(home, ".ssh", f), 0o600)
	}
	conf := fmt.Sprintf("Host pxe\n\tHostName %s\n\tUser netboot\n\tUserKnownHostsFile %s\n", r.PXEAddr, r.KnownHosts)
	writeFile(t, filepath.Join(home, ".ssh", "config"), []byte(conf), 0o600)
	writeFile(t, filepath.Join(home, ".ssh", "known_hosts"), nil, 0o600)
	os.Chmod(filepath.Join(home, ".ssh"), 0o700)
	return home
}

// nbshipAs is nbship on op with HOME home and token in HCLOUD_TOKEN (in
// the environment, as an operator passes it, never on the command line).
func (s *setup) nbshipAs(ctx context.Context, home, token string, args ...string) *exec.Cmd {
	cmd := s.r.Command(ctx, rig.Op, "env", append([]string{"HOME=" + home, s.bin}, args...)...)
	cmd.Dir = s.dir
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(v string) bool {
		return strings.HasPrefix(v, "HCLOUD_")
	}), "HCLOUD_TOKEN="+token)
	return cmd
}

// nbship builders create --provider hetzner makes a server through the
// API and boots the published image on it: the fake API's server is a
// VM in its rescue system (busybox, dropbear, kexec-tools). nbship
// uploads the operator's key, creates the server with it, enables the
// rescue system with it and powers the server on; it waits until the VM
// answers SSH (the VM boots only after nbship has started), writes the
// rescue system's host key to the empty known_hosts and says so once;
// then it kexecs the slot's current generation, whose initrd alone
// prints the marker on the VM's console. builders list shows the server
// and builders delete removes it. An instance nbship does not know, or
// one of another architecture than the server type, is refused before
// the server is made.
func TestBuildersCreateHetznerBootsByKexec(t *testing.T) {
	qemu := needQEMU(t)
	needKexecTools(t)
	const inst, token, name = "hetzner-kexec", "e2e-hcloud-token-5f0c9a", "nbship-e2e-builder"
	s := newSetup(t, "m2.xlarge.x86", "baseURL         "+rigHTTPURL(t), "profile         "+inst+" x86_64-linux")
	ctx := mustCtx(t, 10*time.Minute)
	k := &kexecSetup{setup: s, pxe: newPXEImages(t, s.r)}
	home := operatorHome(t, s.r)
	pub, err := os.ReadFile(filepath.Join(home, ".ssh", "id_ed25519.pub"))
	if err != nil {
		t.Fatal(err)
	}
	img := buildVMImage(t, pub)
	marker := randomMarker()
	k.publishImage(t, ctx, inst, "x86_64-linux", "bzImage", debianAmd64+"linux", markerInitrd(t, img.base, marker), 0)

	fake := hetznertest.NewOn(t, token, listenIn(t, s.r, rig.Op))
	fake.SetAddress("127.0.0.1")
	apiURL := fake.APIURL()
	port := freePort(t, s.r)

	// What the server could not boot is refused before anything bills:
	// nothing is sent but the price query.
	for _, c := range []struct{ typ, instance, want string }{
		{"cax21", inst, "server type cax21 is aarch64, but the image of --instance " + inst + " is x86_64-linux"},
		{"cx22", "no-such-instance", "--instance no-such-instance"},
	} {
		cmd := s.nbshipAs(ctx, home, token, "builders", "create", "--provider", "hetzner", "--type", c.typ, "--location", "fsn1",
			"--name", name, "--instance", c.instance, "--yes", "--config", s.config, "--api-url", apiURL, "--ssh-port", strconv.Itoa(port))
		var e bytes.Buffer
		cmd.Stderr = &e
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(lastErrorLine(e.String()), c.want) {
			t.Errorf("builders create --type %s --instance %s = %v, %q; want exit status 2 and a line naming %q", c.typ, c.instance, err, e.String(), c.want)
		}
		for _, call := range fake.Calls() {
			if call.Method != "GET" {
				t.Errorf("builders create --type %s --instance %s sent %s %s before refusing", c.typ, c.instance, call.Method, call.Path)
			}
		}
	}

	accessLog := filepath.Join(s.r.Dir, "pxe", "nginx", "logs", "access.log")
	logStart := fileSize(accessLog)
	st := &started{done: make(chan error, 1)}
	st.cmd = s.nbshipAs(ctx, home, token, "builders", "create", "--provider", "hetzner", "--type", "cx22", "--location", "fsn1",
		"--name", name, "--instance", inst, "--yes", "--config", s.config, "--api-url", apiURL,
		"--ssh-port", strconv.Itoa(port), "--ssh-timeout", "8m")
	st.cmd.Stdout, st.cmd.Stderr = &st.stdout, &st.stderr
	if err := st.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { st.done <- st.cmd.Wait() }()
	t.Cleanup(func() { st.cmd.Process.Kill() })

	// The server boots once the API has powered it on.
	v := startVMOn(t, ctx, s.r, qemu, img.base, 1024, port)
	offset := len(v.consoleText())
	if strings.Contains(v.consoleText(), marker) {
		t.Fatal("the marker is on the console before any kexec")
	}
	err = st.wait(t, 9*time.Minute)
	stdout, stderr := st.stdout.String(), st.stderr.String()
	t.Logf("nbship builders create:\n%s%s", stderr, stdout)
	if err != nil {
		t.Fatalf("nbship builders create: %v", err)
	}
	v.waitConsole(t, regexp.MustCompile(regexp.QuoteMeta(marker)), offset)

	// What the operator was told.
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(img.hostKey))
	if err != nil {
		t.Fatal(err)
	}
	khPath := filepath.Join(home, ".ssh", "known_hosts")
	for _, want := range []string{
		"hetzner: cx22 (x86_64) in fsn1 costs €0.0071/h, at most €4.5101/month (gross); it is billed until it is deleted",
		fmt.Sprintf("added new host key ssh-ed25519 %s for [127.0.0.1]:%d to %s", ssh.FingerprintSHA256(hostKey), port, khPath),
		"runs " + inst + " ",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("nbship builders create said nothing like %q", want)
		}
	}
	if n := strings.Count(stderr, "added new host key"); n != 1 {
		t.Errorf("nbship builders create said %d times that it added a host key, want once", n)
	}
	if strings.Contains(stdout+stderr, token) {
		t.Errorf("nbship builders create printed the API token")
	}

	// Trust on first use: known_hosts holds the rescue system's key, the
	// one the VM's initramfs was made with, and nothing else.
	kh, err := os.ReadFile(khPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(kh)), fmt.Sprintf("[127.0.0.1]:%d %s", port, img.hostKey); got != want {
		t.Errorf("known_hosts = %q, want %q", got, want)
	}

	// The API calls: the operator's key uploaded, the server made with
	// it, the rescue system enabled with it, the server powered on.
	keys := fake.Keys()
	if len(keys) != 1 || keys[0].PublicKey != strings.TrimSpace(string(pub)) {
		t.Fatalf("the fake's SSH keys = %+v, want the operator's key only", keys)
	}
	servers := fake.Servers()
	if len(servers) != 1 {
		t.Fatalf("the fake's servers = %+v, want one", servers)
	}
	srv := servers[0]
	if srv.Name != name || srv.Type != "cx22" || srv.Location != "fsn1" || srv.Status != "running" || !srv.Rescue ||
		!slices.Equal(srv.SSHKeys, []int64{keys[0].ID}) {
		t.Errorf("the fake's server = %+v, want %s, cx22 in fsn1, running in rescue with key %d", srv, name, keys[0].ID)
	}
	actions := map[string]hetznertest.Call{}
	for _, c := range fake.Calls() {
		if c.Token != token {
			t.Errorf("%s %s came with token %q, want the one in HCLOUD_TOKEN", c.Method, c.Path, c.Token)
		}
		if c.Method == "POST" {
			actions[c.Path] = c
		}
	}
	id := strconv.FormatInt(srv.ID, 10)
	for _, p := range []string{"/ssh_keys", "/servers", "/servers/" + id + "/actions/enable_rescue", "/servers/" + id + "/actions/poweron"} {
		if _, ok := actions[p]; !ok {
			t.Errorf("nbship never sent POST %s; it sent %q", p, fake.Paths())
		}
	}
	for _, p := range []string{"/servers", "/servers/" + id + "/actions/enable_rescue"} {
		var body struct {
			SSHKeys []int64 `json:"ssh_keys"`
		}
		if err := json.Unmarshal(actions[p].Body, &body); err != nil || !slices.Equal(body.SSHKeys, []int64{keys[0].ID}) {
			t.Errorf("POST %s sent ssh_keys %v (%v), want [%d]", p, body.SSHKeys, err, keys[0].ID)
		}
	}

	// The VM fetched the image from nginx, as a booting machine would.
	log := readFrom(t, accessLog, logStart)
	for _, f := range []string{"bzImage", "initrd"} {
		if !regexp.MustCompile(`"GET /hydra-` + regexp.QuoteMeta(inst) + `/` + f + ` HTTP/1\.1" 200 `).MatchString(log) {
			t.Errorf("nginx access log has no GET of %s by the VM:\n%s", f, log)
		}
	}

	// builders list shows it; builders delete takes it away.
	run := func(args ...string) (string, string) {
		t.Helper()
		cmd := s.nbshipAs(ctx, home, token, append(args, "--provider", "hetzner", "--api-url", apiURL)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("nbship %s: %v\n%s", strings.Join(args, " "), err, e.String())
		}
		return o.String(), e.String()
	}
	out, errOut := run("builders", "list")
	row := regexp.MustCompile(`(?m)^hetzner\s+` + id + `\s+` + name + `\s+cx22\s+fsn1\s+x86_64\s+127\.0\.0\.1\s+running\s`)
	if !row.MatchString(out) || !strings.Contains(errOut, "hetzner: 1 builders") {
		t.Errorf("nbship builders list =\n%s%s\nwant server %s (%s) running at 127.0.0.1", errOut, out, id, name)
	}
	out, _ = run("builders", "delete", id)
	if want := "hetzner builder " + id + " deleted"; !strings.Contains(out, want) {
		t.Errorf("nbship builders delete %s = %q, want %q", id, out, want)
	}
	if left := fake.Servers(); len(left) != 0 {
		t.Errorf("servers left after builders delete: %+v", left)
	}
	if _, errOut = run("builders", "list"); !strings.Contains(errOut, "hetzner: 0 builders") {
		t.Errorf("nbship builders list after the delete said %q, want 0 builders", errOut)
	}

	v.stop()
	if pids, err := s.r.Processes(rig.Op, "qemu-system-x86_64"); err != nil || len(pids) > 0 {
		t.Errorf("qemu processes left in op: %v, %v", pids, err)
	}
	noNbshipLeft(t, s.r, rig.Op, rig.PXE)
}
