package remote

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nbship/nbship/internal/testbin"
)

// TestResolveAgreesWithOpenSSH resolves destinations through configs
// with both OpenSSH's `ssh -G` and the built-in parser, and requires the
// same settings (or an error from both). Some cases also say what OpenSSH
// answers, so that a wrong reading of ssh -G's output cannot pass.
func TestResolveAgreesWithOpenSSH(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		testbin.Missing(t, "ssh not found: %v (apt-get install openssh-client)", err)
	}
	home := t.TempDir()
	// ${HOME} must mean the same to ssh and to the built-in parser.
	t.Setenv("HOME", home)
	sshDir := filepath.Join(home, ".ssh")
	if err := os.MkdirAll(sshDir, 0o700); err != nil {
		t.Fatal(err)
	}
	inc := filepath.Join(sshDir, "inc.conf")
	if err := os.WriteFile(inc, []byte("Match host never-matches\nHost inc\n  User incuser\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	type check func(r *resolved) bool
	tests := []struct {
		name   string
		config string
		dests  []string
		want   map[string]check // what OpenSSH says, per destination
	}{
		{
			name:   "ProxyCommand is used",
			config: "Host pc\n  ProxyCommand nc %h %p\n",
			dests:  []string{"pc", "other"},
			want: map[string]check{
				"pc":    func(r *resolved) bool { return r.proxyCommand == "nc %h %p" && r.proxyJump == "" },
				"other": func(r *resolved) bool { return r.proxyCommand == "" },
			},
		},
		{
			name:   "the first of ProxyCommand and ProxyJump wins",
			config: "Host cmdfirst\n  ProxyCommand nc %h %p\n  ProxyJump j1\nHost jumpfirst\n  ProxyJump j1,u@j2:2200\n  ProxyCommand nc %h %p\nHost *\n  ProxyJump late\n",
			dests:  []string{"cmdfirst", "jumpfirst", "x"},
			want: map[string]check{
				"cmdfirst":  func(r *resolved) bool { return r.proxyCommand == "nc %h %p" && r.proxyJump == "" },
				"jumpfirst": func(r *resolved) bool { return r.proxyCommand == "" && r.proxyJump == "j1,u@j2:2200" },
				"x":         func(r *resolved) bool { return r.proxyJump == "late" },
			},
		},
		{
			name:   "Match host sees the HostName",
			config: "Host db\n  HostName 10.0.0.5\nMatch host 10.*\n  ProxyJump bastion\n",
			dests:  []string{"db", "10.0.0.7", "web"},
			want: map[string]check{
				"db":  func(r *resolved) bool { return r.proxyJump == "bastion" && r.hostname == "10.0.0.5" },
				"web": func(r *resolved) bool { return r.proxyJump == "" },
			},
		},
		{
			name:   "Match host lists and negation",
			config: "Match host a,b\n  User listed\nMatch !host c,d\n  Port 2201\nMatch host E*\n  User upper\n",
			dests:  []string{"a", "b", "c", "e1", "E1"},
			want: map[string]check{
				"a": func(r *resolved) bool { return r.user == "listed" && r.port == 2201 },
				"c": func(r *resolved) bool { return r.user != "listed" && r.port == 22 },
			},
		},
		{
			name:   "Match exec and originalhost do not break other hosts",
			config: "Host oh\n  HostName real.example\nMatch originalhost oh\n  User orig\nMatch exec \"test %h = ex1\"\n  User execd\nMatch exec false\n  User never\nMatch user bob\n  Port 2202\nMatch localuser nobody-here\n  Port 2203\n",
			dests:  []string{"oh", "ex1", "plain", "bob@plain"},
			want: map[string]check{
				"oh":        func(r *resolved) bool { return r.user == "orig" && r.hostname == "real.example" },
				"ex1":       func(r *resolved) bool { return r.user == "execd" },
				"plain":     func(r *resolved) bool { return r.user != "never" && r.port == 22 },
				"bob@plain": func(r *resolved) bool { return r.user == "bob" && r.port == 2202 },
			},
		},
		{
			name:   "? is exactly one character",
			config: "Host db?\n  User one\nHost *\n  User any\n",
			dests:  []string{"db", "db1", "db12"},
			want: map[string]check{
				"db":   func(r *resolved) bool { return r.user == "any" },
				"db1":  func(r *resolved) bool { return r.user == "one" },
				"db12": func(r *resolved) bool { return r.user == "any" },
			},
		},
		{
			name: "tokens and environment",
			config: "Host tok\n  HostName %h.example\n  User tokuser\n  Port 2222\n  HostKeyAlias TokAlias\n" +
				"  UserKnownHostsFile ${HOME}/kh-%% %d/kh-%C %d/kh-%i-%L-%l %d/kh-%k-%h-%p-%r-%u-%n\n" +
				"  IdentityFile ~/.ssh/id-%h-%r\n  IdentityFile ${HOME}/id2\n",
			dests: []string{"tok"},
			want: map[string]check{
				"tok": func(r *resolved) bool {
					return len(r.userKnownHosts) == 4 && r.userKnownHosts[0] == home+"/kh-%" &&
						strings.HasSuffix(r.userKnownHosts[3], "/kh-tokalias-tok.example-2222-tokuser-"+localUserName()+"-tok") &&
						r.hostKeyAlias == "tokalias"
				},
			},
		},
		{
			name:   "# in a value, comments, tabs and = between keyword and value",
			config: "Host\ttab1  tab2\n  User=hash#user # a comment\n  HostName h#name\n  Port = 2204\n# Host tab3\n",
			dests:  []string{"tab1", "tab2", "tab3"},
			want: map[string]check{
				"tab2": func(r *resolved) bool { return r.user == "hash#user" && r.hostname == "h#name" && r.port == 2204 },
			},
		},
		{
			name:   "host names lowercased, Host patterns case-sensitive",
			config: "Host MiXed\n  HostName Some.EXAMPLE\nHost lower\n  User low\nHost pct\n  HostName H.%%\n",
			dests:  []string{"MiXed", "mixed", "LOWER", "UPPER", "10.0.0.1", "FE80::1", "pct"},
			want: map[string]check{
				"MiXed": func(r *resolved) bool { return r.hostname == "some.example" },
				"UPPER": func(r *resolved) bool { return r.hostname == "upper" },
				"LOWER": func(r *resolved) bool { return r.user != "low" },
			},
		},
		{
			name:   "quoted known_hosts files with spaces",
			config: "Host q\n  UserKnownHostsFile \"/path with space/kh\" ~/kh2\n  GlobalKnownHostsFile '/etc/g h/k'\n",
			dests:  []string{"q"},
			want: map[string]check{
				"q": func(r *resolved) bool {
					return reflect.DeepEqual(r.userKnownHosts, []string{"/path with space/kh", home + "/kh2"}) &&
						reflect.DeepEqual(r.globalKnownHosts, []string{"/etc/g h/k"})
				},
			},
		},
		{
			name:   "Match final sees the resolved name in Host lines too",
			config: "Host fin\n  HostName fin.example\nHost fin.example\n  User byname\nMatch final host fin.example\n  Port 2205\n",
			dests:  []string{"fin", "other"},
			want: map[string]check{
				"fin": func(r *resolved) bool { return r.user == "byname" && r.port == 2205 },
			},
		},
		{
			name: "the options nbship uses",
			config: "Host opts\n  IdentitiesOnly yes\n  StrictHostKeyChecking accept-new\n  ConnectTimeout 4\n" +
				"  ServerAliveInterval 9\n  ServerAliveCountMax 2\n  HostKeyAlgorithms -ssh-rsa*,rsa-sha2-*\n  IdentityAgent none\n  HashKnownHosts yes\n" +
				"Host strict\n  StrictHostKeyChecking yes\n  HostKeyAlgorithms ^ssh-ed25519\nHost loose\n  StrictHostKeyChecking no\n  HostKeyAlgorithms +ssh-rsa\n" +
				"Host nojump\n  ProxyJump none\n  ProxyCommand none\nHost *\n  ProxyJump j9\n",
			dests: []string{"opts", "strict", "loose", "nojump", "u@opts:2299"},
			want: map[string]check{
				"opts": func(r *resolved) bool {
					return r.identitiesOnly && r.strictHostKeys == "accept-new" && r.connectTimeout == 4 &&
						r.aliveInterval == 9 && r.aliveCountMax == 2 && !strings.Contains(r.hostKeyAlgorithms, "rsa") && r.hashKnownHosts
				},
				"nojump":      func(r *resolved) bool { return r.proxyJump == "" && r.proxyCommand == "" },
				"u@opts:2299": func(r *resolved) bool { return r.user == "u" && r.port == 2299 },
			},
		},
		{
			name:   "Match sees HostName with %h, in host and exec",
			config: "Host *.lan\n  HostName %h.example.net\nMatch host *.example.net\n  User viaexp\nHost ex2\n  HostName real2\nMatch exec \"test %h = real2\"\n  Port 2207\nHost !neg\n  User negonly\n",
			dests:  []string{"pc.lan", "ex2", "neg", "x"},
			want: map[string]check{
				"pc.lan": func(r *resolved) bool { return r.user == "viaexp" && r.hostname == "pc.lan.example.net" },
				"ex2":    func(r *resolved) bool { return r.port == 2207 },
				"x":      func(r *resolved) bool { return r.user != "negonly" },
			},
		},
		{
			name:   "IdentityFile repeated",
			config: "Host idf\n  IdentityFile /k1\n  IdentityFile /k2\nHost *\n  IdentityFile /k1\n  IdentityFile none\n",
			dests:  []string{"idf", "other"},
			want: map[string]check{
				"idf": func(r *resolved) bool { return reflect.DeepEqual(r.identityFiles, []string{"/k1", "/k2", "none"}) },
			},
		},
		{
			name:   "Include and a Match inside it",
			config: "Include " + inc + "\nHost inc\n  User outer\n  Port 2206\n",
			dests:  []string{"inc"},
			want: map[string]check{
				"inc": func(r *resolved) bool { return r.user == "incuser" && r.port == 2206 },
			},
		},
		{
			name:   "an unknown keyword is an error, unless ignored",
			config: "Host a\n  NoSuchOption yes\n",
			dests:  []string{"b"},
		},
		{
			name:   "IgnoreUnknown",
			config: "IgnoreUnknown NoSuch*,Other\nHost a\n  NoSuchOption yes\n  UseKeychain yes\n",
			dests:  []string{"b"},
		},
		{
			name:   "IgnoreUnknown covers it",
			config: "IgnoreUnknown NoSuch*,UseKeychain\nHost a\n  NoSuchOption yes\n  UseKeychain yes\n  User u\n",
			dests:  []string{"a"},
			want:   map[string]check{"a": func(r *resolved) bool { return r.user == "u" }},
		},
		{
			name:   "a bad Match attribute is an error for every host",
			config: "Match nonsense x\n  User u\n",
			dests:  []string{"a"},
		},
		{
			name:   "an invalid ProxyJump is an error",
			config: "Host a\n  ProxyJump j1, j2\n",
			dests:  []string{"b"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(home, "config"+string(rune('a'+i)))
			if err := os.WriteFile(file, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			viaSSH, err := loadSettings(Config{Home: home, SSHConfig: file})
			if err != nil {
				t.Fatal(err)
			}
			builtin, err := loadSettings(Config{Home: home, SSHConfig: file, BuiltinSSHConfig: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, dest := range tt.dests {
				u, host, port, err := parseDest(dest)
				if err != nil {
					t.Fatal(err)
				}
				want, wantErr := viaSSH.sshG(host, u, port)
				got, gotErr := builtin.builtin(host, u, port)
				if (wantErr != nil) != (gotErr != nil) {
					t.Errorf("%s: ssh -G error %v, built-in error %v", dest, wantErr, gotErr)
					continue
				}
				if wantErr != nil {
					continue
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s: built-in = %+v,\nssh -G     = %+v", dest, *got, *want)
				}
				if c := tt.want[dest]; c != nil && !c(want) {
					t.Errorf("%s: ssh -G said %+v, which this test did not expect", dest, *want)
				}
				// And the targets built from them are the same.
				tw, errW := viaSSH.resolve(dest)
				tg, errG := builtin.resolve(dest)
				if (errW != nil) != (errG != nil) || errW == nil && !reflect.DeepEqual(tw, tg) {
					t.Errorf("%s: resolve = %+v, %v with ssh -G, %+v, %v built-in", dest, tw, errW, tg, errG)
				}
			}
			if tt.want == nil && len(tt.dests) > 0 {
				if _, err := viaSSH.resolve(tt.dests[0]); err == nil || !strings.Contains(err.Error(), file) {
					t.Errorf("resolve(%s) = %v, want an error naming %s", tt.dests[0], err, file)
				}
			}
		})
	}
}
