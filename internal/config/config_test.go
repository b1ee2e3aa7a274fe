package config

import (
	"errors"
	"strings"
	"testing"
)

const seed = `buildHost       root@my.aarch64.builder
pxeHost         netboot@my.netboot.server
pxeDir          /var/lib/nginx/netboot/
opensslServer   my.netboot.server
opensslPort     61616
`

func TestParseSeedFileUnchanged(t *testing.T) {
	c, err := Parse("builders.conf", []byte(seed))
	if err != nil {
		t.Fatalf("Parse(seed) error: %v", err)
	}
	got := []string{c.BuildHost, c.PXEHost, c.PXEDir, c.OpenSSLServer}
	want := []string{"root@my.aarch64.builder", "netboot@my.netboot.server", "/var/lib/nginx/netboot/", "my.netboot.server"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("field %d = %q, want %q", i, got[i], want[i])
		}
	}
	if c.OpenSSLPort != 61616 {
		t.Errorf("OpenSSLPort = %d, want 61616", c.OpenSSLPort)
	}
	if err := c.Require("buildHost", "pxeHost", "pxeDir", "opensslServer", "opensslPort"); err != nil {
		t.Errorf("Require on the seed file: %v", err)
	}
	if c.Jobs() != 5 || c.Cores() != 45 || c.Keep() != 3 {
		t.Errorf("defaults = %d %d %d, want 5 45 3", c.Jobs(), c.Cores(), c.Keep())
	}
}

func TestParseOwnKeysAndComments(t *testing.T) {
	in := seed + "\n# a comment\n   \nbuildJobs 8 # trailing comment\r\nbuildCores\t12\nprofile c3.large.arm aarch64-linux\nprofile n3.xlarge.x86 x86_64-linux\n"
	c, err := Parse("f", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if c.Jobs() != 8 || c.Cores() != 12 {
		t.Errorf("Jobs, Cores = %d, %d, want 8, 12", c.Jobs(), c.Cores())
	}
	if len(c.Profiles) != 2 || c.Profiles[1].Name != "n3.xlarge.x86" || c.Profiles[1].System != "x86_64-linux" {
		t.Errorf("Profiles = %+v", c.Profiles)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"unknown key", "buildhost x\n", `f:1: unknown key "buildhost" (did you mean "buildHost"?)`},
		{"unknown key plain", "\n\nfrobnicate 1\n", `f:3: unknown key "frobnicate"`},
		{"no value", "pxeDir\n", `f:1: key "pxeDir" has no value; write it like: pxeDir`},
		{"two words", "pxeHost a b\n", `f:1: pxeHost: value must be one word`},
		{"bad port", "opensslPort 70000\n", `f:1: opensslPort: value "70000" must be a TCP port`},
		{"port not number", "opensslPort http\n", `f:1: opensslPort: value "http" must be a TCP port`},
		{"duplicate", "pxeDir /a\npxeDir /b\n", `f:2: key "pxeDir" is already set on line 1`},
		{"bad jobs", "buildJobs -1\n", `f:1: buildJobs: value "-1" must be a positive`},
		{"control char", "pxeDir /a\x00b\n", `f:1: control character`},
		{"bad profile", "profile x sparc-linux\n", `f:1: profile x: system "sparc-linux"`},
		{"short profile", "profile x\n", `f:1: profile takes a name and a system`},
		{"not utf8", "pxeDir /\xff\n", `f:1: line is not valid UTF-8`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("f", []byte(tc.in))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse(%q) error = %v, want *Error", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q) = %q, want it to contain %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestRequireNamesMissingKeyWithExample(t *testing.T) {
	c, err := Parse("builders.conf", []byte("buildHost root@b\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Require("buildHost", "pxeHost", "pxeDir")
	var me *MissingError
	if !errors.As(err, &me) || me.Key != "pxeHost" {
		t.Fatalf("Require = %v, want MissingError for pxeHost", err)
	}
	if want := "add a line like: pxeHost         netboot@my.netboot.server"; !strings.Contains(err.Error(), want) {
		t.Errorf("Require message %q lacks %q", err, want)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(seed))
	f.Add([]byte("profile a b c\nopensslPort 0\n#x\n"))
	f.Add([]byte("buildJobs 99999999999999999999\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config: fuzz") {
				t.Fatalf("error %q does not name the file", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q is more than one line", err)
			}
			return
		}
		if c.OpenSSLPort < 0 || c.OpenSSLPort > 65535 {
			t.Fatalf("port %d accepted", c.OpenSSLPort)
		}
	})
}

func TestHcloudToken(t *testing.T) {
	c, err := Parse("f", []byte(seed+"hcloudToken hc-SECRET-1\n"))
	if err != nil || c.HcloudToken != "hc-SECRET-1" || !c.Has("hcloudToken") {
		t.Fatalf("Parse(hcloudToken) = %+v, %v", c, err)
	}
	// A bad line says where it is without repeating the secret.
	_, err = Parse("f", []byte("hcloudToken hc-SECRET-1 hc-SECRET-2\n"))
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("Parse(two-word token) = %v, want an error without the token", err)
	}
}
