package transfer

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Counters are a transfer's live figures. They are ours, not the progress
// bar's: a hidden bar stops counting, these never do.
type Counters struct {
	Total      atomic.Int64 // raw bytes to move (set when the manifest is known)
	Raw        atomic.Int64 // raw bytes moved so far
	Compressed atomic.Int64 // zstd bytes moved so far
	Files      atomic.Int64 // files done
	started    atomic.Bool
}

func (c *Counters) begin(total int64) {
	c.Total.Store(total)
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

// Report shows progress on w until stop is closed: a progress bar when tty
// is true, otherwise a plain line at most every interval. It returns when
// the last line is written.
func Report(w io.Writer, tty bool, label string, c *Counters, interval time.Duration, stop <-chan struct{}) {
	if tty {
		reportBar(w, label, c, stop)
		return
	}
	start := time.Now()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if !c.started.Load() {
				continue
			}
			raw, total := c.Raw.Load(), c.Total.Load()
			secs := time.Since(start).Seconds()
			pct := 100.0
			if total > 0 {
				pct = 100 * float64(raw) / float64(total)
			}
			fmt.Fprintf(w, "%s: %s of %s (%.0f%%), %.1f MB/s, ratio %.2f\n",
				label, HumanBytes(raw), HumanBytes(total), pct, float64(raw)/1e6/secs, c.Ratio())
		}
	}
}

func reportBar(w io.Writer, label string, c *Counters, stop <-chan struct{}) {
	var bar *progressbar.ProgressBar
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	update := func() {
		if !c.started.Load() {
			return
		}
		if bar == nil {
			bar = progressbar.NewOptions64(c.Total.Load(),
				progressbar.OptionSetWriter(w),
				progressbar.OptionShowBytes(true),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionSetDescription(label),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
			)
		}
		bar.Describe(fmt.Sprintf("%s (ratio %.2f)", label, c.Ratio()))
		bar.Set64(c.Raw.Load())
	}
	for {
		select {
		case <-stop:
			update()
			if bar != nil {
				bar.Finish()
			}
			return
		case <-t.C:
			update()
		}
	}
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
