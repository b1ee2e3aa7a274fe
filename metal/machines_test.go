package metal

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/metal/metaltest"
)

func TestPlanSystem(t *testing.T) {
	extra := map[string]string{"n3.xlarge.x86": SystemAarch64, "weird.plan": SystemX86}
	tests := []struct{ plan, want string }{
		{"c2.large.arm", SystemAarch64},
		{"c1.large.arm", SystemAarch64},
		{"c3.large.arm64", SystemAarch64},
		{"baremetal_2a", SystemAarch64},
		{"m2.xlarge.x86", SystemX86},
		{"c2.medium.x86", SystemX86},
		{"m1.xlarge.x86", SystemX86},
		{"baremetal_2", SystemX86},
		{"weird.plan", SystemX86},
		{"n3.xlarge.x86", SystemAarch64}, // the config file wins
		{"g2.large.gpu", ""},
	}
	for _, tt := range tests {
		got, err := PlanSystem(tt.plan, extra)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("PlanSystem(%q) = %q, %v, want %q", tt.plan, got, err, tt.want)
		}
	}
}

func TestBuilders(t *testing.T) {
	devs := []Device{
		{ID: "a", State: "active", Tags: []string{"hydra"}},
		{ID: "b", State: "active", Tags: []string{"hydra", DrainTag}},
		{ID: "c", State: "provisioning", Tags: []string{"hydra"}},
		{ID: "d", State: "active", Tags: []string{"other"}},
		{ID: "e", State: "active"},
	}
	tests := []struct {
		tag, skip string
		want      string
	}{
		{"hydra", DrainTag, "a"},
		{"hydra", "", "a,b"},
		{"", DrainTag, "a,d,e"},
		{"", "", "a,b,d,e"},
	}
	for _, tt := range tests {
		var ids []string
		for _, d := range Builders(devs, tt.tag, tt.skip) {
			ids = append(ids, d.ID)
		}
		if got := strings.Join(ids, ","); got != tt.want {
			t.Errorf("Builders(tag %q, skip %q) = %s, want %s", tt.tag, tt.skip, got, tt.want)
		}
	}
}

func TestHostKey(t *testing.T) {
	ed := metaltest.Ed25519Signer(t, "host key test")
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ssh.NewSignerFromKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	both := metaltest.NewSSHServer(t, ec, ed)
	ecOnly := metaltest.NewSSHServer(t, ec)

	// A listener that accepts and never says anything: the fetch must give
	// up at its timeout.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name, addr string
		want       ssh.PublicKey
		err        string
	}{
		{"ed25519 preferred", both.Addr, ed.PublicKey(), ""},
		{"ecdsa when that is all", ecOnly.Addr, ec.PublicKey(), ""},
		{"silent host", mute.Addr().String(), nil, "no host key within"},
		{"nothing listening", closedAddr, nil, "connection refused"},
	}
	for _, tt := range tests {
		got, err := HostKey(context.Background(), tt.addr, 300*time.Millisecond)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("HostKey(%s) = %v, want error containing %q", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil || AuthorizedKey(got) != AuthorizedKey(tt.want) {
			t.Errorf("HostKey(%s) = %v, %v, want %s", tt.name, got, err, AuthorizedKey(tt.want))
		}
	}
}

func TestMachinesLine(t *testing.T) {
	srv := metaltest.NewSSHServer(t, metaltest.Ed25519Signer(t, "line test"))
	devs := []Device{
		{ID: "2", Hostname: "x", State: "active", Plan: "m2.xlarge.x86", PublicIPv4: "127.0.0.1", Tags: []string{"hydra"}},
		{ID: "1", Hostname: "a", State: "active", Plan: "c2.large.arm", PublicIPv4: "127.0.0.1", Tags: []string{"hydra"}},
		{ID: "3", Hostname: "noip", State: "active", Plan: "c2.large.arm", Tags: []string{"hydra"}},
		{ID: "4", Hostname: "gpu", State: "active", Plan: "g2.large.gpu", PublicIPv4: "127.0.0.1", Tags: []string{"hydra"}},
	}
	ms, skipped := Machines(context.Background(), devs, MachinesOptions{
		Tag: "hydra", SkipTag: DrainTag, User: "root", MaxJobs: 2, SpeedFactor: 3,
		Features: []string{"big-parallel", "kvm"}, Port: srv.Port, Timeout: time.Second,
	})
	if len(ms) != 2 || len(skipped) != 2 {
		t.Fatalf("Machines = %d lines, %d skipped (%v), want 2, 2", len(ms), len(skipped), skipped)
	}
	key := AuthorizedKey(metaltest.Ed25519Signer(t, "line test").PublicKey())
	want := "ssh://root@127.0.0.1 aarch64-linux - 2 3 big-parallel,kvm - " + base64.StdEncoding.EncodeToString([]byte(key))
	if got := ms[0].Line(); got != want {
		t.Errorf("Machines[0].Line() = %q, want %q", got, want)
	}
	if !strings.HasPrefix(key, "ssh-ed25519 AAAA") {
		t.Errorf("AuthorizedKey = %q, want ssh-ed25519 AAAA…", key)
	}
	for _, s := range skipped {
		if !strings.Contains(s.Error(), "no public IPv4") && !strings.Contains(s.Error(), "neither arm nor x86") {
			t.Errorf("skipped %v, want no address or unknown plan", s)
		}
	}
}

func TestSSHBanner(t *testing.T) {
	b := metaltest.NewBannerServer(t)
	got, err := SSHBanner(context.Background(), b.Addr, time.Second)
	if err != nil || got != b.Banner {
		t.Errorf("SSHBanner(up) = %q, %v, want %q", got, err, b.Banner)
	}
	b.GoAway()
	if _, err := SSHBanner(context.Background(), b.Addr, time.Second); err == nil {
		t.Errorf("SSHBanner(gone) = nil, want an error")
	}
	if err := b.ComeBack(1); err != nil {
		t.Fatal(err)
	}
	if _, err := SSHBanner(context.Background(), b.Addr, time.Second); err == nil || !strings.Contains(err.Error(), "no SSH banner") {
		t.Errorf("SSHBanner(silent) = %v, want no SSH banner", err)
	}
	if got, err := SSHBanner(context.Background(), b.Addr, time.Second); err != nil || got != b.Banner {
		t.Errorf("SSHBanner(back) = %q, %v, want %q", got, err, b.Banner)
	}
}

func TestWaitReboot(t *testing.T) {
	fast := WaitOptions{Interval: 10 * time.Millisecond, ProbeTimeout: time.Second}
	t.Run("down and up", func(t *testing.T) {
		b := metaltest.NewBannerServer(t)
		b.GoAway()
		go func() {
			time.Sleep(50 * time.Millisecond)
			b.ComeBack(2)
		}()
		got, err := WaitReboot(context.Background(), b.Addr, fast)
		if err != nil || got != b.Banner {
			t.Errorf("WaitReboot = %q, %v, want %q", got, err, b.Banner)
		}
	})
	t.Run("never goes down", func(t *testing.T) {
		b := metaltest.NewBannerServer(t)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := WaitReboot(ctx, b.Addr, fast)
		if err == nil || !strings.Contains(err.Error(), "still answers") {
			t.Errorf("WaitReboot = %v, want still answers", err)
		}
	})
	t.Run("never comes back", func(t *testing.T) {
		b := metaltest.NewBannerServer(t)
		b.GoAway()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := WaitReboot(ctx, b.Addr, fast)
		if err == nil || !strings.Contains(err.Error(), "did not come back") {
			t.Errorf("WaitReboot = %v, want did not come back", err)
		}
	})
}

func FuzzReadBanner(f *testing.F) {
	for _, s := range []string{
		"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n",
		"hello\r\nSSH-2.0-x\r\n",
		"SSH-1.5-old\r\n",
		"SSH-1.99-compat\n",
		"",
		strings.Repeat("x", 300) + "\n",
		strings.Repeat("\n", 40),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readBanner(bytes.NewReader(in))
		if err == nil && !strings.HasPrefix(got, "SSH-2.0-") && !strings.HasPrefix(got, "SSH-1.99-") {
			t.Errorf("readBanner(%q) = %q, want an SSH 2 banner or an error", in, got)
		}
		if strings.ContainsAny(got, "\r\n") {
			t.Errorf("readBanner(%q) = %q, want no line end", in, got)
		}
	})
}
