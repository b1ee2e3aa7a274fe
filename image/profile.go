package image

import (
	"fmt"
	"net/url"
	"strings"
)

// Profile is an instance type: which system its netboot image is built for,
// which kernel file that build produces and which serial console it uses.
type Profile struct {
	Name    string // instance type, e.g. c2.large.arm; the slot is hydra-NAME
	System  string // aarch64-linux or x86_64-linux
	Kernel  string // kernel file name: Image (aarch64) or bzImage (x86_64)
	Console string // serial console: ttyAMA0 (aarch64) or ttyS1 (x86_64)
}

// Systems nbship knows how to check.
const (
	Aarch64 = "aarch64-linux"
	X86_64  = "x86_64-linux"
)

var builtin = []Profile{
	{"c2.large.arm", Aarch64, "Image", "ttyAMA0"},
	{"c1.large.arm", Aarch64, "Image", "ttyAMA0"},
	{"m2.xlarge.x86", X86_64, "bzImage", "ttyS1"},
	{"c2.medium.x86", X86_64, "bzImage", "ttyS1"},
	{"m1.xlarge.x86", X86_64, "bzImage", "ttyS1"},
}

// Builtin returns the instance types nbship knows without configuration.
func Builtin() []Profile { return append([]Profile(nil), builtin...) }

// ForSystem returns a profile for an instance type declared by a config
// file's `profile NAME SYSTEM` line, with the kernel file and console that
// system's netboot build has.
func ForSystem(name, system string) (Profile, error) {
	if err := ValidName(name); err != nil {
		return Profile{}, err
	}
	switch system {
	case Aarch64:
		return Profile{name, system, "Image", "ttyAMA0"}, nil
	case X86_64:
		return Profile{name, system, "bzImage", "ttyS1"}, nil
	}
	return Profile{}, fmt.Errorf("image: profile %s: system %q is not %s or %s", name, system, Aarch64, X86_64)
}

// Lookup finds the profile of an instance type among the built-in ones and
// extra (from the config file; only Name and System are read from them).
// An extra profile may repeat a built-in one but not change its system.
func Lookup(name string, extra []Profile) (Profile, error) {
	if err := ValidName(name); err != nil {
		return Profile{}, err
	}
	var found *Profile
	for i := range builtin {
		if builtin[i].Name == name {
			p := builtin[i]
			found = &p
		}
	}
	for _, x := range extra {
		if x.Name != name {
			continue
		}
		p, err := ForSystem(x.Name, x.System)
		if err != nil {
			return Profile{}, err
		}
		if found != nil && found.System != p.System {
			return Profile{}, fmt.Errorf("image: profile %s is built in as %s; remove the config line that declares it %s", name, found.System, p.System)
		}
		found = &p
	}
	if found == nil {
		names := make([]string, 0, len(builtin)+len(extra))
		for _, p := range builtin {
			names = append(names, p.Name)
		}
		for _, p := range extra {
			names = append(names, p.Name)
		}
		return Profile{}, fmt.Errorf("image: unknown instance type %q; known: %s (declare others with a config line like: profile NAME aarch64-linux)", name, strings.Join(names, ", "))
	}
	return *found, nil
}

// ValidName checks an instance name: letters, digits, '.', '-' and '_',
// at most 100 of them, and not "." or "..". The name becomes a directory
// and file name on the PXE host, so nothing else is allowed.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("image: instance name is empty")
	}
	if name == "." || name == ".." {
		return fmt.Errorf("image: instance name %q is not allowed", name)
	}
	if len(name) > 100 {
		return fmt.Errorf("image: instance name %.20q... is longer than 100 characters", name)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
		default:
			return fmt.Errorf("image: instance name %q has %q; use only letters, digits, '.', '-' and '_'", name, r)
		}
	}
	return nil
}

// SlotName is the directory under pxeDir a booting instance fetches from.
func SlotName(instance string) string { return "hydra-" + instance }

// URL returns where a booting machine of instance fetches its script:
// baseURL (where pxeDir is served) + "hydra-INSTANCE/netboot.ipxe".
func URL(baseURL, instance string) (string, error) {
	if err := ValidName(instance); err != nil {
		return "", err
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("image: base URL %q must be an absolute http:// or https:// URL, like http://my.netboot.server/", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("image: base URL %q must not carry a query, fragment or user; give the directory where pxeDir is served", baseURL)
	}
	return u.JoinPath(SlotName(instance), ScriptName).String(), nil
}
