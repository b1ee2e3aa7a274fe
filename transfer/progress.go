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
	Files      atomic.Int64 // files (or store paths) done
	FilesTotal atomic.Int64 // files (or store paths) to move
	started    atomic.Bool
}

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

// Report shows progress on w until stop is closed: a progress bar when tty
// is true, otherwise a plain line at most every interval. It returns when
// the last line is written.
func Report(w io.Writer, tty bool, label string, c *Counters, interval time.Duration, stop <-chan struct{}) {
	report(w, tty, label, c, interval, stop, false)
}

// ReportPaths is Report for store paths: it adds paths done of the total
// and an estimate of the time left.
func ReportPaths(w io.Writer, tty bool, label string, c *Counters, interval time.Duration, stop <-chan struct{}) {
	report(w, tty, label, c, interval, stop, true)
}

func report(w io.Writer, tty bool, label string, c *Counters, interval time.Duration, stop <-chan struct{}, paths bool) {
	if tty {
		reportBar(w, label, c, stop, paths)
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
			if paths {
				fmt.Fprintf(w, "%s: %d/%d paths, %s of %s (%.0f%%), %.1f MB/s, ETA %s, ratio %.2f\n",
					label, c.Files.Load(), c.FilesTotal.Load(), HumanBytes(raw), HumanBytes(total), pct,
					float64(raw)/1e6/secs, eta(raw, total, secs), c.Ratio())
				continue
			}
			fmt.Fprintf(w, "%s: %s of %s (%.0f%%), %.1f MB/s, ratio %.2f\n",
				label, HumanBytes(raw), HumanBytes(total), pct, float64(raw)/1e6/secs, c.Ratio())
		}
	}
}

// eta estimates the time left at the average rate so far.
func eta(done, total int64, secs float64) string {
	if done <= 0 || secs <= 0 {
		return "?"
	}
	left := time.Duration(float64(total-done) / (float64(done) / secs) * float64(time.Second))
	return left.Round(time.Second).String()
}

func reportBar(w io.Writer, label string, c *Counters, stop <-chan struct{}, paths bool) {
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
		if paths {
			bar.Describe(fmt.Sprintf("%s %d/%d paths (ratio %.2f)", label, c.Files.Load(), c.FilesTotal.Load(), c.Ratio()))
		} else {
			bar.Describe(fmt.Sprintf("%s (ratio %.2f)", label, c.Ratio()))
		}
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
