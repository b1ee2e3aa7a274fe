package kexec

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/nbship/nbship/image"
)

var cmdlineTests = []struct {
	args []string
	want string
	err  string // part of the error, "" = none
}{
	// What NixOS's netboot.ipxe says.
	{[]string{"init=/nix/store/abc-nixos-system/init", "initrd=initrd", "loglevel=4", "${cmdline}"}, "init=/nix/store/abc-nixos-system/init loglevel=4", ""},
	{[]string{"init=/sbin/init", "initrd=initrd", "console=ttyS1,115200n8", "console=ttyS0,115200n8"}, "init=/sbin/init console=ttyS1,115200n8 console=ttyS0,115200n8", ""},
	{nil, "", ""},
	{[]string{"initrd=a", "initrd=b"}, "", ""},
	{[]string{"quiet", "${cmdline}", "panic=30"}, "quiet panic=30", ""},
	{[]string{"ip=${ip}"}, "", "iPXE setting ip"},
	{[]string{"${net0/mac}"}, "", "iPXE setting net0/mac"},
	{[]string{"x=${unterminated"}, "", "iPXE setting unterminated"},
	{[]string{"a\nb"}, "", "control character"},
	{[]string{strings.Repeat("x", 2048)}, "", "more than Linux takes"},
}

func TestCmdline(t *testing.T) {
	for _, tt := range cmdlineTests {
		got, err := Cmdline(tt.args)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("Cmdline(%q) = error %v, want %q", tt.args, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("Cmdline(%q) = %q, %v, want error with %q", tt.args, got, err, tt.err)
		case err == nil && got != tt.want:
			t.Errorf("Cmdline(%q) = %q, want %q", tt.args, got, tt.want)
		}
	}
}

// The command line comes from a script read from the PXE host: whatever
// its arguments, the result is one line Linux takes, or an error.
func FuzzCmdline(f *testing.F) {
	for _, tt := range cmdlineTests {
		f.Add(strings.Join(tt.args, " "))
	}
	f.Fuzz(func(t *testing.T, line string) {
		s, err := image.ParseIPXE([]byte("#!ipxe\nkernel bzImage " + line + "\n"))
		if err != nil {
			return
		}
		got, err := Cmdline(s.Kernel.Args)
		if err != nil {
			return
		}
		if strings.ContainsAny(got, "\x00\n\r") || len(got) > maxCmdline || strings.Contains(got, "${") {
			t.Errorf("Cmdline(%q) = %q: not a command line to give Linux", s.Kernel.Args, got)
		}
		for _, a := range strings.Fields(got) {
			if strings.HasPrefix(a, "initrd=") {
				t.Errorf("Cmdline(%q) = %q, kept %s", s.Kernel.Args, got, a)
			}
		}
	})
}

func testBoot() image.Boot {
	sum := strings.Repeat("ab", 32)
	return image.Boot{
		Instance: "m2.xlarge.x86", System: image.X86_64, Generation: "000001-20261202T000000Z",
		Kernel:  image.BootFile{Name: "bzImage", Size: 10, SHA256: sum},
		Initrds: []image.BootFile{{Name: "initrd", Size: 20, SHA256: sum}},
		Args:    []string{"init=/sbin/init", "initrd=initrd", "${cmdline}"},
	}
}

func TestNewPlan(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*image.Boot)
		base    string
		fetch   Fetch
		kernel  string // URL of the kernel
		noStdin bool
		err     string
	}{
		{"with base URL", nil, "http://pxe.example/", FetchAuto, "http://pxe.example/hydra-m2.xlarge.x86/bzImage", false, ""},
		{"base URL with a path", nil, "http://pxe.example/netboot", FetchAuto, "http://pxe.example/netboot/hydra-m2.xlarge.x86/bzImage", false, ""},
		{"no base URL", nil, "", FetchAuto, "", false, ""},
		{"controller only", nil, "http://pxe.example/", FetchController, "", false, ""},
		{"url only", nil, "http://pxe.example/", FetchURL, "http://pxe.example/hydra-m2.xlarge.x86/bzImage", true, ""},
		{"url only without base", nil, "", FetchURL, "", true, "needs the PXE host's base URL"},
		{"bad base URL", nil, "ftp://pxe.example/", FetchAuto, "", false, "must be an absolute http://"},
		{"two initrds", func(b *image.Boot) { b.Initrds = append(b.Initrds, b.Initrds[0]) }, "", FetchAuto, "", false, "loads 2 initrds"},
		{"variable", func(b *image.Boot) { b.Args = append(b.Args, "ip=${ip}") }, "", FetchAuto, "", false, "iPXE setting ip"},
		{"bad sum", func(b *image.Boot) { b.Kernel.SHA256 = "00" }, "", FetchAuto, "", false, "not 64 hex digits"},
	}
	for _, tt := range tests {
		b := testBoot()
		if tt.edit != nil {
			tt.edit(&b)
		}
		p, err := NewPlan(b, tt.base, tt.fetch)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: NewPlan = %v, want error with %q", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: NewPlan = %v", tt.name, err)
			continue
		}
		if p.Kernel.URL != tt.kernel || p.NoStdin != tt.noStdin || p.Cmdline != "init=/sbin/init" {
			t.Errorf("%s: NewPlan = kernel URL %q, no_stdin %v, cmdline %q; want %q, %v, %q", tt.name, p.Kernel.URL, p.NoStdin, p.Cmdline, tt.kernel, tt.noStdin, "init=/sbin/init")
		}
	}
}

// The end reads its plan from standard input: whatever comes, it is a
// plan that passes Check or an error.
func FuzzPlan(f *testing.F) {
	p, err := NewPlan(testBoot(), "http://pxe.example/", FetchAuto)
	if err != nil {
		f.Fatal(err)
	}
	b, _ := json.Marshal(p)
	f.Add(b)
	f.Add([]byte(`{"system":"x86_64-linux","kernel":{"name":"../x","size":1,"sha256":""}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := decodePlan(in)
		if err != nil {
			return
		}
		for _, f := range []File{p.Kernel, p.Initrd} {
			if f.Size <= 0 || strings.Contains(f.Name, "/") || len(f.SHA256) != 64 {
				t.Errorf("decodePlan(%q) accepted file %+v", in, f)
			}
		}
	})
}
