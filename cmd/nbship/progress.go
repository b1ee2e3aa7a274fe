package main

// Progress on stderr while a stream moves: a bar on a terminal, else a
// plain line every few seconds, from the counters the stream keeps.

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/nbship/nbship/transfer"
)

// progress starts reporting c on stderr and returns a function that stops
// it; for store paths (paths) with paths done of the total and an ETA.
func progress(e *env, label string, c *transfer.Counters, paths bool) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		showProgress(e.stderr, isTerminal(e.stderr), label, c, 5*time.Second, done, paths)
		close(finished)
	}()
	return func() {
		close(done)
		<-finished
	}
}

// showProgress shows progress on w until stop is closed: a progress bar
// when tty is true, otherwise a plain line at most every interval; for
// store paths (paths) it adds paths done of the total and an estimate of
// the time left. It returns when the last line is written.
func showProgress(w io.Writer, tty bool, label string, c *transfer.Counters, interval time.Duration, stop <-chan struct{}, paths bool) {
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
			if !c.Started() {
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
					label, c.Files.Load(), c.FilesTotal.Load(), transfer.HumanBytes(raw), transfer.HumanBytes(total), pct,
					float64(raw)/1e6/secs, eta(raw, total, secs), c.Ratio())
				continue
			}
			fmt.Fprintf(w, "%s: %s of %s (%.0f%%), %.1f MB/s, ratio %.2f\n",
				label, transfer.HumanBytes(raw), transfer.HumanBytes(total), pct, float64(raw)/1e6/secs, c.Ratio())
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

func reportBar(w io.Writer, label string, c *transfer.Counters, stop <-chan struct{}, paths bool) {
	var bar *progressbar.ProgressBar
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	update := func() {
		if !c.Started() {
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
