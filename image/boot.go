package image

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
)

// Boot is what a machine booting a slot now loads: the current
// generation's kernel and initrds, with the SHA-256 and size each had
// when it was published, and the arguments of the script's kernel line.
// nbship kexec gives it to the host it boots, which checks what it
// fetches against it.
type Boot struct {
	Instance   string     `json:"instance"`
	System     string     `json:"system"`     // of the kernel, from its header
	Generation string     `json:"generation"` // the slot's current generation
	Dir        string     `json:"dir"`        // its directory on the PXE host
	Kernel     BootFile   `json:"kernel"`
	Initrds    []BootFile `json:"initrds"`     // in the script's order
	KernelLine int        `json:"kernel_line"` // line of netboot.ipxe that loads the kernel
	Args       []string   `json:"args"`        // the kernel line's arguments after the file, as written
}

// BootFile is one file of a generation a booting machine fetches.
type BootFile struct {
	Name   string `json:"name"` // beside netboot.ipxe
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
}

// Boot describes the slot's current generation, checked as Verify checks
// it. The hashes come from the generation's hash file (written at
// publish), or are computed where it does not cover a file.
func (s *Slot) Boot() (Boot, error) {
	b := Boot{Instance: s.profile.Name}
	cur, err := s.Current()
	if err != nil {
		return b, err
	}
	if cur == "" {
		return b, fmt.Errorf("image: %s serves no generation published by nbship; publish one first (nbship image publish, or nbship %s)", s.Path(), map[string]string{Aarch64: "aarch64", X86_64: "x86_64"}[s.profile.System])
	}
	dir := filepath.Join(s.GenerationsDir(), cur)
	sum, err := Inspect(dir, s.profile)
	if err != nil {
		return b, err
	}
	b.System, b.Generation, b.Dir = sum.System, cur, dir
	cached := readSums(filepath.Join(s.GenerationsDir(), cur+sumsSuffix))
	file := func(name string) (BootFile, error) {
		fsum, err := hashFile(filepath.Join(dir, name), false)
		if err != nil {
			return BootFile{}, err
		}
		if c, ok := cached[name]; ok && c.sum != fsum.sum {
			return BootFile{}, fmt.Errorf("image: %s changed since it was published (its SHA-256 differs from %s.sums); publish the image again", filepath.Join(dir, name), cur)
		}
		return BootFile{Name: name, Size: fsum.size, SHA256: hex.EncodeToString(fsum.sum[:])}, nil
	}
	kernel, err := sum.Script.Kernel.File()
	if err != nil {
		return b, err
	}
	if b.Kernel, err = file(kernel); err != nil {
		return b, err
	}
	for _, r := range sum.Script.Initrds {
		name, err := r.File()
		if err != nil {
			return b, err
		}
		f, err := file(name)
		if err != nil {
			return b, err
		}
		b.Initrds = append(b.Initrds, f)
	}
	b.KernelLine = sum.Script.Kernel.Line
	b.Args = append([]string{}, sum.Script.Kernel.Args...)
	return b, nil
}
