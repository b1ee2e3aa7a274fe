package remote

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nbship/nbship/internal/testsshd"
)

func TestProxyJump(t *testing.T) {
	t.Parallel()
	// debug1 makes sshd log the target of each forwarded connection.
	j1 := testsshd.Start(t, testsshd.Options{Extra: []string{"LogLevel DEBUG1"}})
	j2 := testsshd.Start(t, testsshd.Options{Extra: []string{"LogLevel DEBUG1"}})
	dst := testsshd.Start(t, testsshd.Options{})
	h := newHome(t)
	for _, s := range []*sshd{j1, j2, dst} {
		s.Authorize(h.key.PublicKey())
		h.trust(s)
	}
	h.sshConfig(
		"Host j1", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(j1.Port),
		"Host j2", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(j2.Port),
		"Host one", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(dst.Port), "  ProxyJump j1",
		"Host two", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(dst.Port), "  ProxyJump j1,root@j2",
		// The first hop's own ProxyJump is followed: j2 via j1.
		"Host j2viaj1", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(j2.Port), "  ProxyJump j1",
		"Host nested", "  HostName 127.0.0.1", "  Port "+strconv.Itoa(dst.Port), "  ProxyJump j2viaj1",
		"Host loop", "  ProxyJump loop2", "Host loop2", "  ProxyJump loop",
	)
	forwarded := func(s *sshd, to *sshd) int {
		return s.LogCount("target 127.0.0.1 port " + strconv.Itoa(to.Port))
	}
	for _, tt := range []struct {
		dest           string
		viaJ1, viaJ2   int
		wantJ1, wantJ2 *sshd
	}{
		{"one", 1, 0, dst, nil},
		{"two", 1, 1, j2, dst},
		{"nested", 1, 1, j2, dst},
	} {
		j1Before, j2Before := 0, 0
		if tt.wantJ1 != nil {
			j1Before = forwarded(j1, tt.wantJ1)
		}
		if tt.wantJ2 != nil {
			j2Before = forwarded(j2, tt.wantJ2)
		}
		c := h.dial(tt.dest)
		out, err := c.Output(context.Background(), "echo", "via")
		if err != nil || string(out) != "via\n" {
			t.Errorf("Output(echo) through %s = %q, %v", tt.dest, out, err)
		}
		c.Close()
		if tt.wantJ1 != nil && forwarded(j1, tt.wantJ1)-j1Before != tt.viaJ1 {
			t.Errorf("Dial(%s): j1 forwarded %d connections, want %d", tt.dest, forwarded(j1, tt.wantJ1)-j1Before, tt.viaJ1)
		}
		if tt.wantJ2 != nil && forwarded(j2, tt.wantJ2)-j2Before != tt.viaJ2 {
			t.Errorf("Dial(%s): j2 forwarded %d connections, want %d", tt.dest, forwarded(j2, tt.wantJ2)-j2Before, tt.viaJ2)
		}
	}

	if _, err := Dial(context.Background(), "loop", h.config()); err == nil || !strings.Contains(err.Error(), "ProxyJump") {
		t.Errorf("Dial(loop) = %v, want a ProxyJump loop error", err)
	}

	// Every hop's host key is checked: forget j2's.
	kh := filepath.Join(h.ssh, "known_hosts")
	b, err := os.ReadFile(kh)
	if err != nil {
		t.Fatal(err)
	}
	j2Line := knownhosts.Line([]string{j2.Addr}, j2.HostKey) + "\n"
	if err := os.WriteFile(kh, []byte(strings.Replace(string(b), j2Line, "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Dial(context.Background(), "two", h.config())
	var hk *HostKeyError
	if !errors.As(err, &hk) || hk.Host != "root@j2" || hk.Changed {
		t.Fatalf("Dial(two) with j2 unknown = %v, want an unknown-key error for root@j2", err)
	}
	if !strings.Contains(err.Error(), "jump host for two") {
		t.Errorf("Dial(two) with j2 unknown = %q, want it to say it was a jump host", err)
	}
}
