package image

import (
	"os"
	"path/filepath"
	"strings"
)

// Leftovers adds to have the files of staging directories that earlier,
// failed attempts left in the slot (unlocked, see Stage), by SHA-256, so a
// retry need not resend what already arrived. Every file is hashed here;
// one whose transfer was cut off simply has a hash nobody asks for, and the
// receiver verifies whatever it reuses again. The directories themselves
// are removed by the next Publish or GC.
func (s *Slot) Leftovers(have map[[32]byte]string) error {
	dirs, err := s.LeftoverDirs()
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		files, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, f := range files {
			// A name with a backslash is no file of an image: the start
			// of a file a failed attempt kept, with its state (transfer,
			// resume.go), continued rather than reused.
			if !f.Type().IsRegular() || strings.Contains(f.Name(), `\`) {
				continue
			}
			p := filepath.Join(dir, f.Name())
			fs, err := hashFile(p, false)
			if err != nil {
				continue
			}
			if _, dup := have[fs.sum]; !dup {
				have[fs.sum] = p
			}
		}
	}
	return nil
}

// LeftoverDirs lists the staging directories earlier, failed attempts
// left in the slot (unlocked, see Stage).
func (s *Slot) LeftoverDirs() ([]string, error) {
	gd := s.GenerationsDir()
	entries, err := os.ReadDir(gd)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		dir := filepath.Join(gd, e.Name())
		if strings.HasPrefix(e.Name(), stagePrefix) && s.staleStaging(dir) {
			dirs = append(dirs, dir)
		}
	}
	return dirs, nil
}

// Release gives up a staging directory without removing it: what arrived
// stays for a retry (Leftovers) until the next Publish or GC removes it.
func (s *Slot) Release(staged string) error {
	dir, err := s.checkStaged(staged)
	if err != nil {
		return err
	}
	s.release(dir)
	return nil
}
