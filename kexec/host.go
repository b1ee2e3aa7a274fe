package kexec

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/image"
)

// RefusedError is a host that cannot boot the image: nothing was loaded.
// Its message is one line saying why and what to do.
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return "kexec: refused: " + e.Msg }

func refuse(format string, a ...any) error {
	return &RefusedError{Msg: fmt.Sprintf(format, a...)}
}

// Host is what the end looks at on the machine it runs on. The zero value
// (but Machine) is the real machine; tests point Root at a directory
// holding proc/ and sys/ files of their own.
type Host struct {
	Root     string                            // "" = /: where proc/, sys/ and run/ are read
	Machine  string                            // uname -m; "" = the running kernel's
	LookPath func(file string) (string, error) // nil = exec.LookPath
	Euid     int                               // -1 = os.Geteuid()
}

// RealHost is the machine the end runs on.
func RealHost() Host { return Host{Euid: -1} }

func (h Host) path(p string) string {
	if h.Root == "" {
		return "/" + p
	}
	return filepath.Join(h.Root, p)
}

// machine is uname -m.
func (h Host) machine() string {
	if h.Machine != "" {
		return h.Machine
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Machine[:])
}

// MachineSystem maps uname -m to a Nix system, or "" when nbship has no
// image for it.
func MachineSystem(m string) string {
	switch m {
	case "x86_64", "amd64":
		return image.X86_64
	case "aarch64", "arm64":
		return image.Aarch64
	}
	return ""
}

// CheckArch refuses a kernel of system on a host of another architecture.
func (h Host) CheckArch(system string) error {
	m := h.machine()
	if got := MachineSystem(m); got != system {
		return refuse("the image's kernel is %s, but this host is %s (uname -m); boot it on an %s host, or publish an image for this one", system, m, strings.TrimSuffix(system, "-linux"))
	}
	return nil
}

// CheckKexec refuses a host that cannot kexec: not root, no kexec-tools,
// a kernel without kexec or with kexec_load_disabled set, or a kernel in
// lockdown (integrity or confidentiality), which loads only signed
// kernels.
func (h Host) CheckKexec() (kexecPath string, err error) {
	euid := h.Euid
	if euid < 0 {
		euid = os.Geteuid()
	}
	if euid != 0 {
		return "", refuse("kexec needs root, and nbship runs as uid %d here; log in as root", euid)
	}
	look := h.LookPath
	if look == nil {
		look = exec.LookPath
	}
	kexecPath, err = look("kexec")
	if err != nil {
		return "", refuse("kexec-tools is not installed (no kexec on PATH); install it (apt-get install kexec-tools, or nix-env -iA nixpkgs.kexec-tools)")
	}
	data, err := os.ReadFile(h.path("proc/sys/kernel/kexec_load_disabled"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", refuse("this kernel has no kexec (no /proc/sys/kernel/kexec_load_disabled); boot the host into a rescue system whose kernel has it")
	}
	if err != nil {
		return "", fmt.Errorf("kexec: %w", err)
	}
	disabled, err := ParseLoadDisabled(data)
	if err != nil {
		return "", err
	}
	if disabled {
		return "", refuse("kexec is disabled on this host (/proc/sys/kernel/kexec_load_disabled is 1, and stays so until reboot); reboot into a rescue system that leaves it at 0")
	}
	data, err = os.ReadFile(h.path("sys/kernel/security/lockdown"))
	if err == nil {
		mode, err := ParseLockdown(data)
		if err != nil {
			return "", err
		}
		if mode != "none" {
			return "", refuse("the kernel is in lockdown (%s, /sys/kernel/security/lockdown), which loads only signed kernels; boot the host with lockdown off (Secure Boot off)", mode)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("kexec: %w", err)
	}
	return kexecPath, nil
}

// ParseLoadDisabled reads /proc/sys/kernel/kexec_load_disabled.
func ParseLoadDisabled(data []byte) (bool, error) {
	switch strings.TrimSpace(string(data)) {
	case "0":
		return false, nil
	case "1":
		return true, nil
	}
	return false, fmt.Errorf("kexec: /proc/sys/kernel/kexec_load_disabled holds %.20q, not 0 or 1", data)
}

// ParseLockdown reads /sys/kernel/security/lockdown, which lists the
// modes with the current one in brackets: "[none] integrity
// confidentiality". It returns the current mode.
func ParseLockdown(data []byte) (string, error) {
	if len(data) > 4096 {
		return "", fmt.Errorf("kexec: /sys/kernel/security/lockdown is %d bytes; not the kernel's file", len(data))
	}
	mode := ""
	for _, w := range strings.Fields(string(data)) {
		if len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' {
			if mode != "" {
				return "", fmt.Errorf("kexec: /sys/kernel/security/lockdown marks two modes: %.80q", data)
			}
			mode = w[1 : len(w)-1]
		}
	}
	switch mode {
	case "none", "integrity", "confidentiality":
		return mode, nil
	case "":
		return "", fmt.Errorf("kexec: /sys/kernel/security/lockdown marks no mode: %.80q", data)
	}
	return "", fmt.Errorf("kexec: /sys/kernel/security/lockdown marks an unknown mode %.40q", mode)
}

// Meminfo is what CheckMemory reads of /proc/meminfo, in bytes.
type Meminfo struct {
	Total     int64
	Available int64
}

// ParseMeminfo reads MemTotal and MemAvailable (kernel 3.14 and later) of
// /proc/meminfo.
func ParseMeminfo(data []byte) (Meminfo, error) {
	var m Meminfo
	var haveTotal, haveAvail bool
	for _, line := range bytes.Split(data, []byte("\n")) {
		key, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "MemTotal":
			dst, haveTotal = &m.Total, true
		case "MemAvailable":
			dst, haveAvail = &m.Available, true
		default:
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("kexec: /proc/meminfo: %s is %.40q, not a number of kB", key, rest)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || kb < 0 || kb > 1<<43 { // 8 EiB
			return m, fmt.Errorf("kexec: /proc/meminfo: %s is %.40q, not a number of kB", key, f[0])
		}
		*dst = kb << 10
	}
	switch {
	case !haveTotal:
		return m, errors.New("kexec: /proc/meminfo has no MemTotal line")
	case !haveAvail:
		return m, errors.New("kexec: /proc/meminfo has no MemAvailable line (a kernel older than 3.14); nbship cannot tell whether the image fits")
	}
	return m, nil
}

// The memory an image needs, from the sizes of its kernel and initrd
// (files, as published; n = kernel + initrd):
//
//   - MemTotal >= 2n + 256 MiB: the new system. Its kernel unpacks the
//     initrd into memory while the initrd itself is still there (a NixOS
//     netboot initrd is mostly a squashfs that stays compressed in
//     memory, so unpacked it is about its own size again), and the new
//     kernel and its first processes need room of their own.
//   - MemAvailable >= 2n + 64 MiB: this system, now. The files are written
//     to a temporary directory (a tmpfs on rescue systems) and kexec
//     copies them into kernel memory before they are removed; 64 MiB
//     leaves room for kexec-tools and this process.
const (
	NeedFactor      = 2
	NeedTotalMargin = 256 << 20
	NeedAvailMargin = 64 << 20
)

// CheckMemory refuses a host with less memory than an image of kernel and
// initrd bytes needs (see NeedFactor).
func (h Host) CheckMemory(kernel, initrd int64) error {
	data, err := os.ReadFile(h.path("proc/meminfo"))
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	m, err := ParseMeminfo(data)
	if err != nil {
		return err
	}
	n := kernel + initrd
	if total := NeedFactor*n + NeedTotalMargin; m.Total < total {
		return refuse("this host has %s of memory (MemTotal), and the image (kernel and initrd, %s) needs %s (twice its size and 256 MiB); use a host with more memory", mib(m.Total), mib(n), mib(total))
	}
	if avail := NeedFactor*n + NeedAvailMargin; m.Available < avail {
		return refuse("this host has %s of memory available (MemAvailable), and loading the image (kernel and initrd, %s) needs %s (twice its size and 64 MiB); stop what uses the memory, or use a host with more", mib(m.Available), mib(n), mib(avail))
	}
	return nil
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", (n+(1<<20)-1)>>20) }

// systemd reports whether systemd is the host's init: it then runs the
// kexec (systemctl kexec), stopping services and unmounting file systems
// first.
func (h Host) systemd() bool {
	fi, err := os.Stat(h.path("run/systemd/system"))
	return err == nil && fi.IsDir()
}
