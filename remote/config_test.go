package remote

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
)

func TestParseDest(t *testing.T) {
	tests := []struct {
		in         string
		user, host string
		port       int
		err        bool
	}{
		{in: "builder", host: "builder"},
		{in: "root@builder", user: "root", host: "builder"},
		{in: "root@builder:2222", user: "root", host: "builder", port: 2222},
		{in: "a@b@host", user: "a@b", host: "host"},
		{in: "[::1]:22", host: "::1", port: 22},
		{in: "root@[fe80::1]", user: "root", host: "fe80::1"},
		{in: "::1", host: "::1"},
		{in: "ssh://u@h:7", user: "u", host: "h", port: 7},
		{in: "10.0.0.1", host: "10.0.0.1"},
		{in: "", err: true},
		{in: "@host", err: true},
		{in: "host:0", err: true},
		{in: "host:65536", err: true},
		{in: "host:x", err: true},
		{in: "-oProxyCommand=x", err: true},
		{in: "a b", err: true},
		{in: "[::1", err: true},
		{in: "[::1]x", err: true},
	}
	for _, tt := range tests {
		u, h, p, err := parseDest(tt.in)
		if (err != nil) != tt.err || !tt.err && (u != tt.user || h != tt.host || p != tt.port) {
			t.Errorf("parseDest(%q) = %q, %q, %d, %v, want %q, %q, %d, error %v", tt.in, u, h, p, err, tt.user, tt.host, tt.port, tt.err)
		}
	}
}

func FuzzParseDest(f *testing.F) {
	for _, s := range []string{"builder", "root@h:22", "[::1]:2", "ssh://a@b", "a@@b", "[", "h:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, h, p, err := parseDest(s)
		if err != nil {
			return
		}
		if h == "" || p < 0 || p > 65535 || strings.HasPrefix(h, "-") {
			t.Fatalf("parseDest(%q) = %q, %q, %d", s, u, h, p)
		}
	})
}

// bothResolvers runs f with OpenSSH's ssh -G (where ssh is installed)
// and with the built-in parser.
func bothResolvers(t *testing.T, f func(t *testing.T, builtin bool)) {
	for _, builtin := range []bool{false, true} {
		name := "ssh-G"
		if builtin {
			name = "builtin"
		} else if _, err := exec.LookPath("ssh"); err != nil {
			testbin.Missing(t, "ssh not found: %v (apt-get install openssh-client)", err)
			continue
		}
		t.Run(name, func(t *testing.T) { f(t, builtin) })
	}
}

func TestResolve(t *testing.T) {
	bothResolvers(t, testResolve)
}

func testResolve(t *testing.T, builtin bool) {
	home := t.TempDir()
	sshDir := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(filepath.Join(sshDir, "conf.d"), 0o700); err != nil {
		t.Fatal(err)
	}
	config := `
Include ` + sshDir + `/conf.d/*.conf
Host *.lan !bad.lan
  HostName %h.example.net
  User lanuser
Host builder
  HostName 10.1.2.3
  Port 2222
  User buildbot
  IdentityFile ~/.ssh/builder_%r_%h_%p
  IdentityFile %d/keys/%u-%n
  ProxyJump jump1,ops@jump2:2200
  ConnectTimeout 3
  ServerAliveInterval 7
  ServerAliveCountMax 5
  UserKnownHostsFile ~/.ssh/kh1 /etc/kh2
Host only
  IdentitiesOnly yes
Host nojump
  ProxyJump none
  UserKnownHostsFile none
Host badtoken
  IdentityFile ~/.ssh/%z
Host *
  User everyone
`
	if err := os.WriteFile(filepath.Join(sshDir, "config"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sshDir, "conf.d", "a.conf"), []byte("Host included\n  HostName inc.example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := loadSettings(Config{Home: home, BuiltinSSHConfig: builtin})
	if err != nil {
		t.Fatal(err)
	}
	me := s.localUser
	var defaultIDs []string
	for _, f := range defaultIdentityFiles {
		defaultIDs = append(defaultIDs, filepath.Join(home, f[2:]))
	}
	defaultKH := []string{filepath.Join(sshDir, "known_hosts"), filepath.Join(sshDir, "known_hosts2")}

	tests := []struct {
		dest string
		want target
		err  string
	}{
		{dest: "plain", want: target{alias: "plain", hostname: "plain", port: 22, user: "everyone", identityFiles: defaultIDs, knownHosts: defaultKH}},
		{dest: "me2@plain:23", want: target{alias: "plain", hostname: "plain", port: 23, user: "me2", identityFiles: defaultIDs, knownHosts: defaultKH}},
		{dest: "pc.lan", want: target{alias: "pc.lan", hostname: "pc.lan.example.net", port: 22, user: "lanuser", identityFiles: defaultIDs, knownHosts: defaultKH}},
		{dest: "bad.lan", want: target{alias: "bad.lan", hostname: "bad.lan", port: 22, user: "everyone", identityFiles: defaultIDs, knownHosts: defaultKH}},
		{dest: "included", want: target{alias: "included", hostname: "inc.example", port: 22, user: "everyone", identityFiles: defaultIDs, knownHosts: defaultKH}},
		{dest: "builder", want: target{
			alias: "builder", hostname: "10.1.2.3", port: 2222, user: "buildbot",
			identityFiles:  []string{filepath.Join(sshDir, "builder_buildbot_10.1.2.3_2222"), filepath.Join(home, "keys", me+"-builder")},
			namedIDs:       true,
			proxyJump:      []string{"jump1", "ops@jump2:2200"},
			knownHosts:     []string{filepath.Join(sshDir, "kh1"), "/etc/kh2"},
			connectTimeout: 3 * time.Second, keepAlive: 7 * time.Second, aliveCountMax: 5,
		}},
		{dest: "only", want: target{alias: "only", hostname: "only", port: 22, user: "everyone", identityFiles: defaultIDs, namedIDs: true, knownHosts: defaultKH}},
		{dest: "nojump", want: target{alias: "nojump", hostname: "nojump", port: 22, user: "everyone", identityFiles: defaultIDs, knownHosts: []string{os.DevNull}}},
		{dest: "badtoken", err: "unknown token %z"},
	}
	for _, tt := range tests {
		got, err := s.resolve(tt.dest)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("resolve(%q) = %v, want error %q", tt.dest, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("resolve(%q) = %v", tt.dest, err)
			continue
		}
		// Fields from the environment or defaults are checked apart.
		got.dest, got.globalKnown, got.agentSocket, got.hostKeyAlgorithms = "", nil, "", ""
		want := tt.want
		if want.connectTimeout == 0 {
			want.connectTimeout, want.keepAlive, want.aliveCountMax = defaultConnectTimeout, defaultKeepAlive, defaultAliveCountMax
		}
		if !reflect.DeepEqual(*got, want) {
			t.Errorf("resolve(%q) =\n%+v, want\n%+v", tt.dest, *got, want)
		}
	}

	// Config fields win over the file.
	s.cfg = Config{Home: home, KnownHosts: []string{"/k"}, ConnectTimeout: time.Minute, KeepAlive: time.Hour}
	got, err := s.resolve("builder")
	if err != nil || got.connectTimeout != time.Minute || got.keepAlive != time.Hour || !reflect.DeepEqual(got.knownHosts, []string{"/k"}) || got.globalKnown != nil {
		t.Errorf("resolve(builder) with Config = %+v, %v", got, err)
	}

	// A bad Port anywhere is an error for every host, as in OpenSSH.
	bad := filepath.Join(t.TempDir(), "config")
	os.WriteFile(bad, []byte("Host other\n  Port nope\n"), 0o600)
	s, err = loadSettings(Config{Home: home, SSHConfig: bad, BuiltinSSHConfig: builtin})
	if err == nil {
		_, err = s.resolve("h")
	}
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("resolve(h) with a bad Port = %v, want an error naming %s", err, bad)
	}
}

func TestMissingConfigIsFine(t *testing.T) {
	bothResolvers(t, func(t *testing.T, builtin bool) {
		s, err := loadSettings(Config{Home: t.TempDir(), BuiltinSSHConfig: builtin})
		if err != nil {
			t.Fatalf("loadSettings(no config) = %v", err)
		}
		if got, err := s.resolve("h"); err != nil || got.hostname != "h" || got.port != 22 {
			t.Errorf("resolve(h) = %+v, %v", got, err)
		}
	})
}

// TestRelativeInclude: the built-in parser takes a relative Include
// under Config.Home's .ssh (ssh -G under the password database's home).
func TestRelativeInclude(t *testing.T) {
	home := t.TempDir()
	sshDir := filepath.Join(home, ".ssh")
	os.MkdirAll(filepath.Join(sshDir, "conf.d"), 0o700)
	os.WriteFile(filepath.Join(sshDir, "config"), []byte("Include conf.d/*.conf ~/other\n"), 0o600)
	os.WriteFile(filepath.Join(sshDir, "conf.d", "a.conf"), []byte("Host a\n  HostName a.example\n"), 0o600)
	os.WriteFile(filepath.Join(home, "other"), []byte("Host b\n  HostName b.example\n"), 0o600)
	s, err := loadSettings(Config{Home: home, BuiltinSSHConfig: true})
	if err != nil {
		t.Fatal(err)
	}
	for dest, want := range map[string]string{"a": "a.example", "b": "b.example", "c": "c"} {
		if got, err := s.resolve(dest); err != nil || got.hostname != want {
			t.Errorf("resolve(%s) = %+v, %v, want hostname %s", dest, got, err, want)
		}
	}
}

func FuzzBuiltinConfig(f *testing.F) {
	for _, s := range []string{
		"Host a b\n  HostName %h.example\n  Port 2222\n",
		"Match host a,b !originalhost c exec \"true\"\n  User u\n",
		"Match final\n  ProxyJump j1,u@j2:22\nHost *\n  ProxyCommand nc %h %p\n",
		"Host q\n  UserKnownHostsFile \"/a b\" ~/c '%d/%C'\n  IdentityFile ${HOME}/k\n",
		"Include /nonexistent/*\nMatch all\n",
		"Host=x\n\tUser = \\\"y\\\"\n",
	} {
		f.Add(s, "a")
	}
	home := f.TempDir()
	f.Fuzz(func(t *testing.T, config, dest string) {
		file := filepath.Join(t.TempDir(), "config")
		if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := loadSettings(Config{Home: home, SSHConfig: file, BuiltinSSHConfig: true})
		if err != nil {
			t.Fatal(err)
		}
		s.noExec = true
		got, err := s.resolve(dest)
		if err != nil {
			return
		}
		if got.hostname == "" || got.port < 1 || got.port > 65535 || len(got.knownHosts) == 0 {
			t.Fatalf("resolve(%q) with %q = %+v", dest, config, got)
		}
	})
}

// TestSSHWithoutDashG: an ssh that does not know -G (not OpenSSH) leaves
// the answer to the built-in parser.
func TestSSHWithoutDashG(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "ssh")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho \"ssh: illegal option -- G\" >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	config := filepath.Join(home, "config")
	os.WriteFile(config, []byte("Host a\n  HostName a.example\n"), 0o600)
	s, err := loadSettings(Config{Home: home, SSHConfig: config})
	if err != nil {
		t.Fatal(err)
	}
	s.sshBin = fake
	if got, err := s.resolve("a"); err != nil || got.hostname != "a.example" {
		t.Errorf("resolve(a) with an ssh without -G = %+v, %v, want hostname a.example", got, err)
	}
}

// TestSSHGCancelled: a Dial cancelled while ssh -G runs says it was
// cancelled (errors.Is context.Canceled), not that ssh was killed.
func TestSSHGCancelled(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "ssh")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec sleep 10\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := loadSettings(Config{Home: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	s.sshBin = fake
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx = ctx
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := s.resolve("a"); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "ssh -G a") {
		t.Errorf("resolve(a) cancelled during ssh -G = %v, want context.Canceled naming ssh -G", err)
	}
}
