package image

import (
	"reflect"
	"strings"
	"testing"
)

var ipxeTests = []struct {
	name    string
	in      string
	kernel  string   // Kernel.URI
	args    []string // Kernel.Args
	initrds []string // URIs
	err     string   // substring of the error, "" for none
}{
	{"nixos", "#!ipxe\n# Use the cmdline variable\nkernel bzImage init=/nix/store/abc-nixos-system/init initrd=initrd nohibernate loglevel=4 ${cmdline}\ninitrd initrd\nboot\n",
		"bzImage", []string{"init=/nix/store/abc-nixos-system/init", "initrd=initrd", "nohibernate", "loglevel=4", "${cmdline}"}, []string{"initrd"}, ""},
	{"crlf", "#!ipxe\r\nkernel Image console=ttyAMA0\r\ninitrd initrd\r\nboot\r\n", "Image", []string{"console=ttyAMA0"}, []string{"initrd"}, ""},
	{"gpxe", "#!gpxe\nkernel Image\n", "Image", []string{}, nil, ""},
	{"options", "#!ipxe\nkernel --name k --autofree -r --timeout=10 -t 5 -nfoo Image a\nimgfetch -a initrd\nmodule -- -odd\n",
		"Image", []string{"a"}, []string{"initrd", "-odd"}, ""},
	{"labels and chains of commands", "#!ipxe\n:retry\ndhcp || goto retry\nkernel Image quiet || goto retry\ninitrd initrd && boot\n",
		"Image", []string{"quiet"}, []string{"initrd"}, ""},
	{"imgselect", "#!ipxe\nimgselect Image\n", "Image", []string{}, nil, ""},
	{"indented", "#!ipxe\n  kernel\tImage  x\n\n", "Image", []string{"x"}, nil, ""},
	{"url", "#!ipxe\nkernel http://h/Image\n", "http://h/Image", []string{}, nil, ""},
	{"no header", "kernel Image\n", "", nil, nil, `line 1: script does not start with "#!ipxe"`},
	{"empty", "", "", nil, nil, "does not start with"},
	{"header with text", "#!ipxe2\nkernel Image\n", "", nil, nil, "does not start with"},
	{"no kernel", "#!ipxe\ninitrd initrd\nboot\n", "", nil, nil, "no kernel line"},
	{"two kernels", "#!ipxe\nkernel Image\nkernel bzImage\n", "", nil, nil, "line 3: kernel: a second kernel (line 2"},
	{"chain", "#!ipxe\nchain http://other/boot.ipxe\n", "", nil, nil, "line 2: chain: the script hands over"},
	{"kernel without file", "#!ipxe\nkernel --name k\n", "", nil, nil, "line 2: kernel: no file named"},
	{"option without value", "#!ipxe\nkernel --name\n", "", nil, nil, "option --name needs a value"},
	{"unknown option", "#!ipxe\ninitrd --bogus initrd\nkernel Image\n", "", nil, nil, "line 2: initrd: unknown option --bogus"},
	{"flag with value", "#!ipxe\nkernel --autofree=1 Image\n", "", nil, nil, "option --autofree takes no value"},
	{"binary", "#!ipxe\nkernel Image\x00\n", "", nil, nil, "control character"},
	{"not utf8", "#!ipxe\nkernel \xff\n", "", nil, nil, "not UTF-8"},
}

func TestParseIPXE(t *testing.T) {
	for _, tt := range ipxeTests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseIPXE([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseIPXE(%q) error = %v, want %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseIPXE(%q) = %v", tt.in, err)
			}
			if s.Kernel.URI != tt.kernel || !reflect.DeepEqual(append([]string{}, s.Kernel.Args...), tt.args) {
				t.Errorf("ParseIPXE(%q) kernel = %q %q, want %q %q", tt.in, s.Kernel.URI, s.Kernel.Args, tt.kernel, tt.args)
			}
			var initrds []string
			for _, r := range s.Initrds {
				initrds = append(initrds, r.URI)
			}
			if !reflect.DeepEqual(initrds, tt.initrds) {
				t.Errorf("ParseIPXE(%q) initrds = %q, want %q", tt.in, initrds, tt.initrds)
			}
		})
	}
}

func TestParseIPXEName(t *testing.T) {
	s, err := ParseIPXE([]byte("#!ipxe\nkernel -n vmlinuz Image\ninitrd --name=rd initrd\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Kernel.Name != "vmlinuz" || s.Kernel.Line != 2 || s.Initrds[0].Name != "rd" || s.Initrds[0].Line != 3 {
		t.Errorf("ParseIPXE names/lines = %+v, want vmlinuz at 2, rd at 3", s)
	}
}

func TestRefFile(t *testing.T) {
	tests := []struct {
		uri, want, err string
	}{
		{"Image", "Image", ""},
		{"./bzImage", "bzImage", ""},
		{"initrd?x=1", "initrd", ""},
		{"a/../initrd", "initrd", ""},
		{"http://host/Image", "", "points outside the generation"},
		{"https://host/Image", "", "points outside the generation"},
		{"tftp://host/Image", "", "points outside the generation"},
		{"//host/Image", "", "points outside the generation"},
		{"/Image", "", "points outside the generation"},
		{"../Image", "", "points outside the generation"},
		{"..", "", "points outside the generation"},
		{"sub/Image", "", "subdirectory"},
		{".", "", "names no file"},
		{"${base}/Image", "", "uses a variable"},
		{"%zz", "", "not a valid URI"},
	}
	for _, tt := range tests {
		got, err := Ref{Cmd: "kernel", URI: tt.uri}.File()
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Ref{%q}.File() = %q, %v, want error %q", tt.uri, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Ref{%q}.File() = %q, %v, want %q", tt.uri, got, err, tt.want)
		}
	}
}

func FuzzParseIPXE(f *testing.F) {
	for _, tt := range ipxeTests {
		f.Add([]byte(tt.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseIPXE(data)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("ParseIPXE error %q spans lines", err)
			}
			return
		}
		if s.Kernel.URI == "" || s.Kernel.Line < 2 {
			t.Fatalf("ParseIPXE(%q) accepted a script with kernel %+v", data, s.Kernel)
		}
		for _, r := range append(s.Initrds, s.Kernel) {
			if r.URI == "" || strings.ContainsAny(r.URI, " \t\n") {
				t.Fatalf("ParseIPXE(%q) ref URI %q", data, r.URI)
			}
			name, err := r.File()
			if err == nil && (name == "" || name == "." || name == ".." || strings.Contains(name, "/")) {
				t.Fatalf("Ref{%q}.File() = %q, a name outside the directory", r.URI, name)
			}
		}
	})
}
