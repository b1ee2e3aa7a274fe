package image

import (
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	extra := []Profile{{Name: "c3.large.arm", System: Aarch64}, {Name: "m2.xlarge.x86", System: X86_64}}
	tests := []struct {
		name  string
		extra []Profile
		want  Profile
		err   string
	}{
		{"c2.large.arm", nil, Profile{"c2.large.arm", Aarch64, "Image", "ttyAMA0"}, ""},
		{"c1.large.arm", nil, Profile{"c1.large.arm", Aarch64, "Image", "ttyAMA0"}, ""},
		{"m2.xlarge.x86", nil, Profile{"m2.xlarge.x86", X86_64, "bzImage", "ttyS1"}, ""},
		{"c2.medium.x86", nil, Profile{"c2.medium.x86", X86_64, "bzImage", "ttyS1"}, ""},
		{"m1.xlarge.x86", nil, Profile{"m1.xlarge.x86", X86_64, "bzImage", "ttyS1"}, ""},
		{"c3.large.arm", extra, Profile{"c3.large.arm", Aarch64, "Image", "ttyAMA0"}, ""},
		{"m2.xlarge.x86", extra, Profile{"m2.xlarge.x86", X86_64, "bzImage", "ttyS1"}, ""},
		{"c3.large.arm", nil, Profile{}, "unknown instance type \"c3.large.arm\"; known: c2.large.arm, c1.large.arm, m2.xlarge.x86, c2.medium.x86, m1.xlarge.x86"},
		{"x", extra, Profile{}, "c3.large.arm"},
		{"c2.large.arm", []Profile{{Name: "c2.large.arm", System: X86_64}}, Profile{}, "built in as aarch64-linux"},
		{"r", []Profile{{Name: "r", System: "riscv64-linux"}}, Profile{}, "is not aarch64-linux or x86_64-linux"},
		{"../x", nil, Profile{}, "use only letters"},
	}
	for _, tt := range tests {
		got, err := Lookup(tt.name, tt.extra)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Lookup(%q) = %v, %v, want error %q", tt.name, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Lookup(%q) = %+v, %v, want %+v", tt.name, got, err, tt.want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"c2.large.arm", "m2.xlarge.x86", "a_b-c.9", "..."} {
		if err := ValidName(ok); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/", "a b", "a\x00", "é", strings.Repeat("a", 101)} {
		if err := ValidName(bad); err == nil {
			t.Errorf("ValidName(%q) = nil, want error", bad)
		}
	}
}

func TestURL(t *testing.T) {
	tests := []struct{ base, inst, want, err string }{
		{"http://my.netboot.server/", "c2.large.arm", "http://my.netboot.server/hydra-c2.large.arm/netboot.ipxe", ""},
		{"http://my.netboot.server", "c2.large.arm", "http://my.netboot.server/hydra-c2.large.arm/netboot.ipxe", ""},
		{"https://h:8080/netboot", "m2.xlarge.x86", "https://h:8080/netboot/hydra-m2.xlarge.x86/netboot.ipxe", ""},
		{"https://h/netboot/", "m2.xlarge.x86", "https://h/netboot/hydra-m2.xlarge.x86/netboot.ipxe", ""},
		{"my.netboot.server", "c2.large.arm", "", "must be an absolute http"},
		{"/var/lib/nginx", "c2.large.arm", "", "must be an absolute http"},
		{"ftp://h/", "c2.large.arm", "", "must be an absolute http"},
		{"http:///x", "c2.large.arm", "", "must be an absolute http"},
		{"http://h/?a=b", "c2.large.arm", "", "must not carry a query"},
		{"http://h/", "a/b", "", "instance name"},
	}
	for _, tt := range tests {
		got, err := URL(tt.base, tt.inst)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("URL(%q, %q) = %q, %v, want error %q", tt.base, tt.inst, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("URL(%q, %q) = %q, %v, want %q", tt.base, tt.inst, got, err, tt.want)
		}
	}
}
