// Package kexec boots a published netboot image on a Linux host that runs
// already (a rescue system, a cloud image) by kexec, over SSH.
//
// Two halves. The controller (Run) tells the host's nbship, started over
// SSH as the hidden command kexec-end, what to load as one JSON line on
// its standard input: a Plan. The end (End) refuses before loading
// anything when the host cannot take the image (architecture, kexec
// support, memory), fetches the kernel and initrd from the PXE host's HTTP
// URLs as a booting machine would, or has the controller send them over
// the SSH session when those URLs are not reachable from the host, checks
// their size and SHA-256, loads them with kexec-tools and executes the
// new kernel. The controller then waits until the host answers SSH again.
package kexec

import (
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"

	"github.com/nbship/nbship/image"
)

// Plan is what the end is told: one JSON line on its standard input.
type Plan struct {
	Instance   string `json:"instance"`
	Generation string `json:"generation"`
	System     string `json:"system"` // of the kernel: aarch64-linux or x86_64-linux
	Kernel     File   `json:"kernel"`
	Initrd     File   `json:"initrd"`
	Cmdline    string `json:"cmdline"`
	// NoStdin: the end may not ask the controller for the files; an
	// unreachable URL is then an error.
	NoStdin bool `json:"no_stdin,omitempty"`
}

// File is one file the end loads.
type File struct {
	Name   string `json:"name"`
	URL    string `json:"url,omitempty"` // "": the controller sends it
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Fetch says how the host gets the files.
type Fetch string

const (
	FetchAuto       Fetch = "auto"       // the PXE host's URL, else through the controller
	FetchURL        Fetch = "url"        // the PXE host's URL only
	FetchController Fetch = "controller" // through the controller's SSH connections only
)

// ParseFetch checks a --fetch value.
func ParseFetch(s string) (Fetch, error) {
	switch f := Fetch(s); f {
	case FetchAuto, FetchURL, FetchController:
		return f, nil
	}
	return "", fmt.Errorf("kexec: --fetch %q: want auto, url or controller", s)
}

// NewPlan makes the plan for booting b, the slot's current generation as
// image.Slot.Boot describes it, with its files fetched from baseURL (where
// pxeDir is served; "" when not known, and then only through the
// controller).
func NewPlan(b image.Boot, baseURL string, fetch Fetch) (Plan, error) {
	p := Plan{Instance: b.Instance, Generation: b.Generation, System: b.System, NoStdin: fetch == FetchURL}
	if len(b.Initrds) != 1 {
		return p, fmt.Errorf("kexec: netboot.ipxe of %s %s loads %d initrds; nbship kexec loads exactly one", b.Instance, b.Generation, len(b.Initrds))
	}
	cmdline, err := Cmdline(b.Args)
	if err != nil {
		return p, fmt.Errorf("kexec: netboot.ipxe of %s %s, line %d: %w", b.Instance, b.Generation, b.KernelLine, err)
	}
	p.Cmdline = cmdline
	p.Kernel = File{Name: b.Kernel.Name, Size: b.Kernel.Size, SHA256: b.Kernel.SHA256}
	p.Initrd = File{Name: b.Initrds[0].Name, Size: b.Initrds[0].Size, SHA256: b.Initrds[0].SHA256}
	if fetch != FetchController {
		if baseURL == "" {
			if fetch == FetchURL {
				return p, fmt.Errorf("kexec: --fetch url needs the PXE host's base URL; add a baseURL line to the config or pass --base-url")
			}
		} else {
			u, err := url.Parse(baseURL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
				return p, fmt.Errorf("kexec: base URL %q must be an absolute http:// or https:// URL with no query or user, like http://my.netboot.server/", baseURL)
			}
			slot := image.SlotName(b.Instance)
			p.Kernel.URL = u.JoinPath(slot, p.Kernel.Name).String()
			p.Initrd.URL = u.JoinPath(slot, p.Initrd.Name).String()
		}
	}
	return p, p.Check()
}

// Check says whether a plan is one the end can carry out: it comes over
// the network, so every field is checked before use.
func (p Plan) Check() error {
	if p.System != image.Aarch64 && p.System != image.X86_64 {
		return fmt.Errorf("kexec: plan: system %q is not %s or %s", p.System, image.Aarch64, image.X86_64)
	}
	for _, f := range []struct {
		what string
		f    File
	}{{"kernel", p.Kernel}, {"initrd", p.Initrd}} {
		if err := f.f.check(); err != nil {
			return fmt.Errorf("kexec: plan: %s: %w", f.what, err)
		}
	}
	if p.Kernel.URL == "" && p.NoStdin {
		return fmt.Errorf("kexec: plan: no URL for the kernel, and the controller may not send it")
	}
	if strings.ContainsAny(p.Cmdline, "\x00\n\r") {
		return fmt.Errorf("kexec: plan: the command line has a control character")
	}
	if len(p.Cmdline) > maxCmdline {
		return fmt.Errorf("kexec: plan: the command line is %d bytes, more than Linux takes (%d)", len(p.Cmdline), maxCmdline)
	}
	return nil
}

// maxCmdline is the longest kernel command line accepted: COMMAND_LINE_SIZE
// of x86_64 and arm64 is 2048, the terminating NUL included.
const maxCmdline = 2047

// maxFile bounds a kernel or initrd: 16 GiB.
const maxFile = 16 << 30

func (f File) check() error {
	if f.Name == "" || strings.ContainsAny(f.Name, "/\x00") || f.Name == "." || f.Name == ".." {
		return fmt.Errorf("file name %q is not a plain name", f.Name)
	}
	if f.Size <= 0 || f.Size > maxFile {
		return fmt.Errorf("%s: size %d is not between 1 byte and 16 GiB", f.Name, f.Size)
	}
	if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("%s: SHA-256 %q is not 64 hex digits", f.Name, f.SHA256)
	}
	if f.URL != "" {
		u, err := url.Parse(f.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: URL %q is not an http:// or https:// URL", f.Name, f.URL)
		}
	}
	return nil
}

// Cmdline turns the arguments of a netboot.ipxe kernel line (after the
// kernel's file name) into the command line kexec gives the kernel:
//
//   - initrd=NAME arguments are dropped: iPXE uses them to tell an EFI
//     kernel which of its images is the initrd; kexec passes the initrd
//     itself.
//   - an argument that is exactly ${cmdline} is dropped: NixOS's netboot
//     script ends with it so that an operator can add arguments from the
//     iPXE shell; a machine booting unattended has it unset, which iPXE
//     expands to nothing.
//   - any other ${...} is refused: it is an iPXE setting (${net0/mac},
//     ${ip}, …) only iPXE knows the value of.
//
// The rest is kept in order, joined by single spaces.
func Cmdline(args []string) (string, error) {
	var keep []string
	for _, a := range args {
		switch {
		case strings.HasPrefix(a, "initrd="):
			continue
		case a == "${cmdline}":
			continue
		case strings.Contains(a, "${"):
			name := a[strings.Index(a, "${")+2:]
			if i := strings.IndexByte(name, '}'); i >= 0 {
				name = name[:i]
			}
			return "", fmt.Errorf("kernel argument %q uses the iPXE setting %s, which only iPXE knows; write its value in netboot.ipxe", a, name)
		}
		keep = append(keep, a)
	}
	s := strings.Join(keep, " ")
	if strings.ContainsAny(s, "\x00\n\r") {
		return "", fmt.Errorf("the kernel arguments have a control character")
	}
	if len(s) > maxCmdline {
		return "", fmt.Errorf("the kernel arguments are %d bytes, more than Linux takes (%d)", len(s), maxCmdline)
	}
	return s, nil
}
