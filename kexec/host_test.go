package kexec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nbship/nbship/image"
)

const meminfoSample = `MemTotal:        1000000 kB
MemFree:          800000 kB
MemAvailable:     900000 kB
Buffers:            1000 kB
HugePages_Total:       0
`

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		in    string
		total int64
		avail int64
		err   string
	}{
		{meminfoSample, 1000000 << 10, 900000 << 10, ""},
		{"MemAvailable: 5 kB\nMemTotal: 7 kB", 7 << 10, 5 << 10, ""},
		{"MemTotal: 7 kB\n", 0, 0, "no MemAvailable"},
		{"MemAvailable: 7 kB\n", 0, 0, "no MemTotal"},
		{"", 0, 0, "no MemTotal"},
		{"MemTotal: 7 MB\nMemAvailable: 5 kB\n", 0, 0, "not a number of kB"},
		{"MemTotal: -7 kB\nMemAvailable: 5 kB\n", 0, 0, "not a number of kB"},
		{"MemTotal: 99999999999999999999 kB\nMemAvailable: 5 kB\n", 0, 0, "not a number of kB"},
	}
	for _, tt := range tests {
		m, err := ParseMeminfo([]byte(tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseMeminfo(%q) = %+v, %v, want error with %q", tt.in, m, err, tt.err)
			}
			continue
		}
		if err != nil || m.Total != tt.total || m.Available != tt.avail {
			t.Errorf("ParseMeminfo(%q) = %+v, %v, want {%d %d}", tt.in, m, err, tt.total, tt.avail)
		}
	}
}

func FuzzParseMeminfo(f *testing.F) {
	f.Add([]byte(meminfoSample))
	f.Add([]byte("MemTotal: 1 kB\nMemAvailable: 1 kB"))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ParseMeminfo(in)
		if err == nil && (m.Total < 0 || m.Available < 0) {
			t.Errorf("ParseMeminfo(%q) = %+v: negative", in, m)
		}
	})
}

var lockdownTests = []struct {
	in   string
	mode string
	err  string
}{
	{"[none] integrity confidentiality\n", "none", ""},
	{"none [integrity] confidentiality\n", "integrity", ""},
	{"none integrity [confidentiality]\n", "confidentiality", ""},
	{"none integrity confidentiality\n", "", "marks no mode"},
	{"[none] [integrity]\n", "", "marks two modes"},
	{"[sideways]\n", "", "unknown mode"},
	{"", "", "marks no mode"},
}

func TestParseLockdown(t *testing.T) {
	for _, tt := range lockdownTests {
		mode, err := ParseLockdown([]byte(tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseLockdown(%q) = %q, %v, want error with %q", tt.in, mode, err, tt.err)
			}
			continue
		}
		if err != nil || mode != tt.mode {
			t.Errorf("ParseLockdown(%q) = %q, %v, want %q", tt.in, mode, err, tt.mode)
		}
	}
}

func FuzzParseLockdown(f *testing.F) {
	for _, tt := range lockdownTests {
		f.Add([]byte(tt.in))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		mode, err := ParseLockdown(in)
		if err == nil && mode != "none" && mode != "integrity" && mode != "confidentiality" {
			t.Errorf("ParseLockdown(%q) = %q", in, mode)
		}
	})
}

func FuzzParseLoadDisabled(f *testing.F) {
	for _, s := range []string{"0\n", "1\n", "2\n", "", "0 1"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := ParseLoadDisabled(in)
		v := strings.TrimSpace(string(in))
		if err == nil && !(v == "0" && !d || v == "1" && d) {
			t.Errorf("ParseLoadDisabled(%q) = %v", in, d)
		}
	})
}

// fakeRoot makes a directory with the files a Host reads.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func found(string) (string, error)    { return "/usr/sbin/kexec", nil }
func notFound(string) (string, error) { return "", errors.New("not found") }

// Each reason a host cannot kexec is one refusal naming it.
func TestCheckKexec(t *testing.T) {
	const disabled = "proc/sys/kernel/kexec_load_disabled"
	const lockdown = "sys/kernel/security/lockdown"
	tests := []struct {
		name  string
		files map[string]string
		look  func(string) (string, error)
		euid  int
		want  string // part of the refusal, "" = none
	}{
		{"fine", map[string]string{disabled: "0\n", lockdown: "[none] integrity confidentiality\n"}, found, 0, ""},
		{"no securityfs", map[string]string{disabled: "0\n"}, found, 0, ""},
		{"not root", map[string]string{disabled: "0\n"}, found, 1000, "needs root"},
		{"no kexec-tools", map[string]string{disabled: "0\n"}, notFound, 0, "kexec-tools is not installed"},
		{"kernel without kexec", nil, found, 0, "has no kexec"},
		{"disabled", map[string]string{disabled: "1\n"}, found, 0, "kexec_load_disabled is 1"},
		{"lockdown", map[string]string{disabled: "0\n", lockdown: "none [integrity] confidentiality\n"}, found, 0, "lockdown (integrity"},
		{"lockdown confidentiality", map[string]string{disabled: "0\n", lockdown: "none integrity [confidentiality]\n"}, found, 0, "lockdown (confidentiality"},
	}
	for _, tt := range tests {
		h := Host{Root: fakeRoot(t, tt.files), LookPath: tt.look, Euid: tt.euid}
		_, err := h.CheckKexec()
		var re *RefusedError
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: CheckKexec() = %v, want nil", tt.name, err)
		case tt.want != "" && (!errors.As(err, &re) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: CheckKexec() = %v, want a refusal with %q", tt.name, err, tt.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: CheckKexec() = %q, want one line", tt.name, err)
		}
	}
}

func TestCheckMemory(t *testing.T) {
	const mib = 1 << 20
	root := fakeRoot(t, map[string]string{"proc/meminfo": "MemTotal: 1048576 kB\nMemAvailable: 524288 kB\n"}) // 1 GiB, 512 MiB
	h := Host{Root: root}
	tests := []struct {
		kernel, initrd int64
		want           string
	}{
		{8 * mib, 100 * mib, ""},
		{8 * mib, 216 * mib, ""}, // 2*224+64 = 512 available, 2*224+256 = 704 total
		{8 * mib, 217 * mib, "MemAvailable"},
		{8 * mib, 500 * mib, "MemTotal"},
	}
	for _, tt := range tests {
		err := h.CheckMemory(tt.kernel, tt.initrd)
		var re *RefusedError
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckMemory(%d, %d) = %v, want nil", tt.kernel, tt.initrd, err)
		case tt.want != "" && (!errors.As(err, &re) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckMemory(%d, %d) = %v, want a refusal naming %s", tt.kernel, tt.initrd, err, tt.want)
		}
	}
}

func TestCheckArch(t *testing.T) {
	tests := []struct {
		machine, system string
		ok              bool
	}{
		{"x86_64", image.X86_64, true},
		{"aarch64", image.Aarch64, true},
		{"x86_64", image.Aarch64, false},
		{"aarch64", image.X86_64, false},
		{"riscv64", image.X86_64, false},
	}
	for _, tt := range tests {
		err := Host{Machine: tt.machine}.CheckArch(tt.system)
		if (err == nil) != tt.ok {
			t.Errorf("Host{Machine: %s}.CheckArch(%s) = %v, want ok %v", tt.machine, tt.system, err, tt.ok)
		}
		if err != nil && !strings.Contains(err.Error(), tt.machine) {
			t.Errorf("Host{Machine: %s}.CheckArch(%s) = %v, want the machine named", tt.machine, tt.system, err)
		}
	}
}

func FuzzReadBanner(f *testing.F) {
	for _, s := range []string{"SSH-2.0-dropbear_2022.83\r\n", "hi\r\nSSH-2.0-x\r\n", "SSH-1.5-old\r\n", "SSH-2.0-unended", "", strings.Repeat("x\n", 5000)} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readBanner(strings.NewReader(string(in)))
		if err == nil && !strings.HasPrefix(got, "SSH-2.0-") && !strings.HasPrefix(got, "SSH-1.99-") {
			t.Errorf("readBanner(%q) = %q, want an SSH 2 banner or an error", in, got)
		}
		if err == nil && strings.ContainsAny(got, "\r\n") {
			t.Errorf("readBanner(%q) = %q, with its line end", in, got)
		}
	})
}
