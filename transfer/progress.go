package transfer

import (
	"fmt"
	"sync/atomic"
)

// Counters are a transfer's live figures. They are ours, not the progress
// bar's: a hidden bar stops counting, these never do.
type Counters struct {
	Total      atomic.Int64 // raw bytes to move (set when the manifest is known)
	Raw        atomic.Int64 // raw bytes moved so far
	Compressed atomic.Int64 // zstd bytes moved so far
	Files      atomic.Int64 // files (or store paths) done
	FilesTotal atomic.Int64 // files (or store paths) to move
	started    atomic.Bool
}

// Started reports whether the transfer knows its totals (its manifest).
func (c *Counters) Started() bool { return c.started.Load() }

func (c *Counters) begin(total, files int64) {
	c.Total.Store(total)
	c.FilesTotal.Store(files)
	c.started.Store(true)
}

// Ratio is raw bytes per compressed byte so far (0 before any data).
func (c *Counters) Ratio() float64 {
	z := c.Compressed.Load()
	if z == 0 {
		return 0
	}
	return float64(c.Raw.Load()) / float64(z)
}

// HumanBytes formats a byte count for people.
func HumanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
