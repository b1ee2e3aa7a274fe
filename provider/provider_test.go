package provider

import "testing"

func TestArchAndSystem(t *testing.T) {
	tests := []struct{ in, arch, system string }{
		{"x86", "x86_64", "x86_64-linux"},
		{"arm", "aarch64", "aarch64-linux"},
		{"aarch64-linux", "aarch64", "aarch64-linux"},
		{"amd64", "x86_64", "x86_64-linux"},
		{"riscv64", "riscv64", ""},
	}
	for _, tt := range tests {
		if got := Arch(tt.in); got != tt.arch {
			t.Errorf("Arch(%q) = %q, want %q", tt.in, got, tt.arch)
		}
		if got := System(tt.in); got != tt.system {
			t.Errorf("System(%q) = %q, want %q", tt.in, got, tt.system)
		}
	}
}
