package main

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/metal/metaltest"
	"github.com/nbship/nbship/provider"
	"github.com/nbship/nbship/provider/hetzner/hetznertest"
	"github.com/nbship/nbship/remote"
)

const hzToken = "hz-Cmd7SECRETx2"

func init() {
	hetznerPoll = time.Millisecond
}

// runBuilders runs nbship with HCLOUD_TOKEN (and the fake's endpoint) in
// the environment and checks that no token shows up in its output.
func runBuilders(t *testing.T, f *hetznertest.Fake, vars map[string]string, stdin io.Reader, args ...string) pkResult {
	t.Helper()
	base := map[string]string{"HCLOUD_TOKEN": hzToken, "HOME": t.TempDir()}
	if f != nil {
		base["HCLOUD_ENDPOINT"] = f.APIURL()
	}
	return runSecret(t, base, vars, stdin, "HCLOUD_TOKEN", []string{hzToken, pkToken}, args...)
}

func posts(f *hetznertest.Fake) int {
	n := 0
	for _, c := range f.Calls() {
		if c.Method == "POST" || c.Method == "DELETE" {
			n++
		}
	}
	return n
}

func TestBuildersCreateHetzner(t *testing.T) {
	sshd := hetznertest.StartSSHD(t)
	f := hetznertest.New(t, hzToken)
	f.SetAddress("127.0.0.1")
	vars := map[string]string{"HOME": sshd.Client}
	base := []string{"builders", "create", "--provider", "hetzner", "--type", "cax21", "--location", "fsn1", "--name", "arm-builder", "--ssh-port", strconv.Itoa(sshd.Port)}

	// Without --yes and a terminal: refused before anything is sent.
	r := runBuilders(t, f, vars, nil, base...)
	r.check(t, "create without --yes", 1, nil, []string{"hetzner: not creating a builder without confirmation", "hint: check the cost"})
	if len(f.Calls()) != 0 {
		t.Errorf("a refused create sent %v", f.Paths())
	}

	// --dry-run: the plan, nothing sent, no token needed.
	r = runBuilders(t, f, map[string]string{"HOME": sshd.Client, "HCLOUD_TOKEN": ""}, nil, append(base, "--dry-run", "--instance", "c2.large.arm")...)
	r.check(t, "create --dry-run", 0, []string{`"server_type":"cax21"`, `"nbship":"builder"`, `"rescue":"linux64"`, "kexec the published image of c2.large.arm"}, []string{"hetzner: dry run: nothing sent"})
	if len(f.Calls()) != 0 {
		t.Errorf("a dry run sent %v", f.Paths())
	}

	// --yes: the cost, the server, SSH with the host key recorded, and the boot.
	var booted string
	defer func(old func(context.Context, *env, bootSetup, *remote.Client, string) error) { builderBoot = old }(builderBoot)
	builderBoot = func(ctx context.Context, e *env, _ bootSetup, c *remote.Client, instance string) error {
		out, err := c.Output(ctx, "uname", "-s")
		booted = instance + " " + strings.TrimSpace(string(out))
		return err
	}
	r = runBuilders(t, f, vars, nil, append(base, "--yes", "--instance", "c2.large.arm")...)
	r.check(t, "create --yes", 0,
		[]string{"hetzner builder 10", "(arm-builder) created: cax21 in fsn1, 127.0.0.1, running"},
		[]string{"hetzner: cax21 (aarch64) in fsn1 costs €0.0124/h, at most €7.7231/month (gross); it is billed until it is deleted",
			"hetzner: uploaded SSH key", "hetzner: enable_rescue done", "added new host key ssh-ed25519"})
	if booted != "c2.large.arm Linux" {
		t.Errorf("boot step ran with %q, want the instance and a working connection", booted)
	}
	kh, _ := os.ReadFile(filepath.Join(sshd.Client, ".ssh", "known_hosts"))
	if string(kh) != knownhosts.Line([]string{sshd.Addr}, sshd.HostKey)+"\n" {
		t.Errorf("known_hosts = %q, want the server's key recorded", kh)
	}
	if n := strings.Count(r.stderr, "added new host key"); n != 1 {
		t.Errorf("stderr says the host key was added %d times, want once:\n%s", n, r.stderr)
	}
	ss := f.Servers()
	if len(ss) != 1 || !ss[0].Rescue || ss[0].Status != "running" {
		t.Errorf("servers = %+v, want one running in rescue", ss)
	}

	// Without a boot step it says what to run.
	builderBoot = nil
	r = runBuilders(t, f, vars, nil, append(base[:len(base)-4], "--name", "arm-2", "--ssh-port", strconv.Itoa(sshd.Port), "--yes", "--instance", "c2.large.arm")...)
	r.check(t, "create without kexec", 0, nil, []string{"is in its rescue system; boot the image with: nbship kexec root@" + sshd.Addr + " --instance c2.large.arm"})
}

func TestBuildersCreateHetznerFailures(t *testing.T) {
	f := hetznertest.New(t, hzToken)
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519.pub"), []byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op\n"), 0o644)
	base := []string{"builders", "create", "--provider", "hetzner", "--type", "cax21", "--location", "fsn1", "--name", "b1", "--yes"}
	tests := []struct {
		name   string
		vars   map[string]string
		args   []string
		setup  func()
		code   int
		stderr []string
	}{
		{name: "wrong token", vars: map[string]string{"HCLOUD_TOKEN": "wrong-" + hzToken}, code: 1,
			stderr: []string{"nbship: hetzner: the API refused the token (401); check HCLOUD_TOKEN\nnbship: hint: "}},
		{name: "no token", vars: map[string]string{"HCLOUD_TOKEN": ""}, code: 1, stderr: []string{"hetzner: no API token", "hcloudToken"}},
		{name: "token flag", args: []string{"--token", "x"}, code: 2, stderr: []string{"unknown flag: --token"}},
		{name: "no key", vars: map[string]string{"HOME": t.TempDir()}, code: 1, stderr: []string{"builders: no SSH public key at", "--ssh-key"}},
		{name: "not offered", args: []string{"--location", "mars1"}, code: 1, stderr: []string{"hetzner: cax21 has no price in mars1", "nbship builders prices"}},
		{name: "failed action", setup: func() { f.FailAction("enable_rescue", "rescue_failed", "no rescue today") }, code: 1,
			stderr: []string{"hetzner: action enable_rescue (", "failed: no rescue today (rescue_failed); server 10", "deleted again"}},
		{name: "no provider", args: []string{"--provider", "aws"}, code: 2, stderr: []string{`--provider "aws" is not hetzner or packet`}},
		{name: "unreachable", args: []string{"--ssh-timeout", "100ms", "--ssh-port", "1"}, code: 1,
			stderr: []string{"did not answer SSH within 100ms", "hint: the server keeps running, and costing money: delete it with 'nbship builders delete --provider hetzner 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := map[string]string{"HOME": home}
			for k, v := range tt.vars {
				vars[k] = v
			}
			if tt.setup != nil {
				tt.setup()
			}
			args := append(append([]string{}, base...), tt.args...)
			r := runBuilders(t, f, vars, nil, args...)
			r.check(t, strings.Join(args, " "), tt.code, nil, tt.stderr)
			if strings.Count(r.stderr, "nbship: ") > 2 {
				t.Errorf("stderr has more than an error and a hint:\n%s", r.stderr)
			}
		})
	}
	// The unreachable one is left running, as the hint says; nothing else is.
	if ss := f.Servers(); len(ss) != 1 {
		t.Errorf("servers left = %+v, want only the unreachable one", ss)
	}
}

func TestBuildersListDeletePrices(t *testing.T) {
	f := hetznertest.New(t, hzToken)
	foreign := f.AddServer(hetznertest.Server{Name: "db", Status: "running", Type: "cx22", Location: "nbg1", IPv4: "192.0.2.1"})
	mine := f.AddServer(hetznertest.Server{Name: "arm-1", Status: "running", Type: "cax21", Location: "fsn1", IPv4: "192.0.2.2", Labels: map[string]string{"nbship": "builder"}})
	id := strconv.FormatInt(mine, 10)

	r := runBuilders(t, f, nil, nil, "builders", "list")
	r.check(t, "list", 0, []string{"PROVIDER", "hetzner   " + id + "  arm-1  cax21  fsn1      aarch64  192.0.2.2  running  €0.0124/h"}, []string{"hetzner: 1 builders"})
	if strings.Contains(r.stdout, "db") {
		t.Errorf("list shows a server nbship did not make:\n%s", r.stdout)
	}
	r = runBuilders(t, f, nil, nil, "builders", "list", "--json")
	var ss []provider.Server
	if err := json.Unmarshal([]byte(r.stdout), &ss); err != nil || len(ss) != 1 || ss[0].ID != id {
		t.Errorf("list --json = %s, %v", r.stdout, err)
	}
	r = runBuilders(t, f, nil, nil, "builders", "get", "--provider", "hetzner", id)
	r.check(t, "get", 0, []string{"name      arm-1", "labels    nbship=builder"}, nil)

	r = runBuilders(t, f, nil, nil, "builders", "delete", "--provider", "hetzner", strconv.FormatInt(foreign, 10))
	r.check(t, "delete foreign", 1, nil, []string{"was not made by nbship", "hint: nbship deletes only the servers it made"})
	r = runBuilders(t, f, nil, nil, "builders", "delete", "--provider", "hetzner", id)
	r.check(t, "delete", 0, []string{"hetzner builder " + id + " deleted"}, nil)
	if left := f.Servers(); len(left) != 1 || left[0].ID != foreign {
		t.Errorf("servers after delete = %+v, want the foreign one only", left)
	}
	r = runBuilders(t, f, nil, nil, "builders", "list", "--provider", "hetzner")
	r.check(t, "list when empty", 0, nil, []string{"hetzner: 0 builders"})
	if r.stdout != "" {
		t.Errorf("empty list printed %q", r.stdout)
	}

	r = runBuilders(t, f, nil, nil, "builders", "prices", "--provider", "hetzner", "--location", "hel1")
	r.check(t, "prices", 0, []string{"TYPE   LOCATION  ARCH     HOURLY   MONTHLY  NOTE\ncax21  hel1      aarch64  €0.0124  €7.7231  gross\ncx22   hel1      x86_64   €0.0071  €4.5101  gross\n"}, nil)

	f.Fail(hetznertest.Failure{Status: 429, Code: "rate_limit_exceeded", Message: "slow down", RetryAfter: "86400"})
	r = runBuilders(t, f, nil, nil, "builders", "prices", "--provider", "hetzner")
	r.check(t, "prices rate-limited", 1, nil, []string{"rate-limiting this token (429 Too Many Requests) on GET /pricing and asks to wait 24h0m0s", "hint: the API is rate-limiting"})

	r = runBuilders(t, nil, map[string]string{"HCLOUD_TOKEN": ""}, nil, "builders", "list")
	r.check(t, "list with nothing configured", 1, nil, []string{"builders: no provider is configured"})
}

func TestBuildersPacket(t *testing.T) {
	srv := pkServer(t)
	vars := map[string]string{"HCLOUD_TOKEN": "", "PACKET_AUTH_TOKEN": pkToken, "PACKET_PROJECT_ID": pkProject, "PACKET_API_URL": srv.APIURL()}
	r := runBuilders(t, nil, vars, nil, "builders", "list")
	r.check(t, "list packet", 0, []string{"packet    " + pkArm + "  arm1"}, []string{"packet: 1 builders"})
	r = runBuilders(t, nil, vars, nil, "builders", "prices", "--provider", "packet", "--type", "c2.large.arm")
	r.check(t, "prices packet", 0, []string{"c2.large.arm  da        aarch64  $0.3000  -        spot"}, nil)
	r = runBuilders(t, nil, vars, nil, "builders", "create", "--provider", "packet", "--type", "c2.large.arm", "--location", "da", "--name", "arm9",
		"--max-bid", "0.5", "--ipxe-url", "http://netboot.example/hydra-c2.large.arm/netboot.ipxe", "--yes")
	r.check(t, "create packet", 0, []string{"packet builder ", "(arm9) created: c2.large.arm in da, no address yet, waiting"}, []string{"c2.large.arm spot price now: da $0.30/h", "packet: spot request"})
	r = runBuilders(t, nil, vars, nil, "builders", "delete", "--provider", "packet", pkArm)
	r.check(t, "delete packet", 0, []string{"packet builder " + pkArm + " deleted"}, nil)
	if srv.HasRequest(pkReq) {
		t.Error("delete left the device's spot request")
	}
}

// TestMachinesHetzner: with a Hetzner token and no Packet one, machines
// lists the Hetzner builders with their host keys.
func TestMachinesHetzner(t *testing.T) {
	f := hetznertest.New(t, hzToken)
	sshd := metaltest.NewSSHServer(t, metaltest.Ed25519Signer(t, "nbship machines hetzner"))
	f.AddServer(hetznertest.Server{Name: "arm-1", Status: "running", Type: "cax21", Location: "fsn1", IPv4: "127.0.0.1", Labels: map[string]string{"nbship": "builder"}})
	f.AddServer(hetznertest.Server{Name: "x86-1", Status: "running", Type: "cx22", Location: "fsn1", IPv4: "127.0.0.1", Labels: map[string]string{"nbship": "builder", "skip-hydra": ""}})
	f.AddServer(hetznertest.Server{Name: "db", Status: "running", Type: "cx22", Location: "fsn1", IPv4: "127.0.0.1"})
	r := runBuilders(t, f, nil, nil, "machines", "--port", strconv.Itoa(sshd.Port))
	r.check(t, "machines", 0, []string{"ssh://root@127.0.0.1 aarch64-linux - 1 1 - - c3NoLWVkMjU1MTkg"}, nil)
	if n := strings.Count(r.stdout, "\n"); n != 1 {
		t.Errorf("machines = %q, want one line: the drained and the foreign server left out", r.stdout)
	}
}

func TestKnownHostsName(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.7:22", "192.0.2.7"},
		{"127.0.0.1:2222", "[127.0.0.1]:2222"},
		{"[2001:db8::1]:22", "2001:db8::1"},
		{"[2001:db8::1]:2200", "[2001:db8::1]:2200"},
	} {
		if got := knownHostsName(tc.addr); got != tc.want {
			t.Errorf("knownHostsName(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
