package protocol

// The --json objects. Each is one line on stdout (an end over --stdio
// prints its own on stderr, where stdout is the channel); the same thing
// has the same key in every object.

// Stream is the figures of one transfer as an end reports them.
type Stream struct {
	Files     int   `json:"files"`        // files, or store paths, in the stream
	FilesSent int   `json:"files_sent"`   // whose bytes crossed
	Reused    int   `json:"files_reused"` // the receiver had already
	Bytes     int64 `json:"bytes"`        // raw bytes sent
	// Resumed is the raw bytes a retry did not send again: the start of a
	// file a failed attempt had brought, the same at both ends.
	Resumed    int64   `json:"resumed_bytes,omitempty"`
	Compressed int64   `json:"compressed_bytes"`
	Stored     int64   `json:"stored_bytes,omitempty"` // sender only: bytes that went uncompressed
	Level      string  `json:"level,omitempty"`        // sender only: the zstd level the stream ended at
	WireBytes  int64   `json:"wire_bytes"`             // on the socket (or through the controller)
	Ratio      float64 `json:"ratio"`
	Seconds    float64 `json:"seconds"`
	MBps       float64 `json:"mbps"` // raw MB/s
	// Published is where the receiver put what it got: the slot or the
	// directory; Generation and Previous, for a slot, the generation it
	// now serves and the one it served before ("" for none).
	Published  string `json:"published,omitempty"`
	Generation string `json:"generation,omitempty"`
	Previous   string `json:"previous,omitempty"`
	Path       string `json:"path,omitempty"` // direct, ssh, or local (built where it is published)
	// Lanes is how many TCP connections the direct path ran over (see
	// tunnel.DialLanes); 0 over the ssh path.
	Lanes int `json:"lanes,omitempty"`
	// Receiver of store paths only (recv --substitute): the paths its
	// substituters gave it, and their NAR bytes.
	Substituted      int   `json:"paths_substituted,omitempty"`
	SubstitutedBytes int64 `json:"substituted_bytes,omitempty"`
	// PeakRSS is the end's peak resident memory (the kernel's VmHWM) in
	// KiB; 0 where unknown.
	PeakRSS int64 `json:"peak_rss_kib,omitempty"`
}

// Build is what aarch64 and x86_64 print: the build, then the stream's
// figures (for x86_64, the copy into the slot on the PXE host).
type Build struct {
	Instance     string  `json:"instance"`
	Drv          string  `json:"drv"`
	Out          string  `json:"out"`
	PathsPushed  int     `json:"paths_pushed"`
	TotalSeconds float64 `json:"total_seconds"`
	Stream
}

// Ship is what ship prints.
type Ship struct {
	PathsTotal   int `json:"paths_total"`
	PathsSent    int `json:"paths_sent"`
	PathsSkipped int `json:"paths_skipped"` // already there
	// With --substitute-on-destination: the paths the receiver got from
	// its own substituters (not sent, not counted as skipped), and their
	// NAR bytes.
	PathsSubstituted int   `json:"paths_substituted"`
	SubstitutedBytes int64 `json:"substituted_bytes"`
	Files            int   `json:"files,omitempty"` // with --dest
	Bytes            int64 `json:"bytes"`           // raw: NARs (--store) or files (--dest) sent
	// Resumed is the raw bytes of NARs the last attempt did not send again:
	// the starts failed attempts kept.
	Resumed      int64   `json:"resumed_bytes,omitempty"`
	Compressed   int64   `json:"compressed_bytes"`
	WireBytes    int64   `json:"wire_bytes"`
	Seconds      float64 `json:"seconds"` // the transfer, as the sender timed it
	MBps         float64 `json:"mbps"`
	Path         string  `json:"path"`            // direct or ssh
	Lanes        int     `json:"lanes,omitempty"` // TCP connections of the direct path
	Published    string  `json:"published,omitempty"`
	TotalSeconds float64 `json:"total_seconds"` // everything, as the command timed it
}

// Round rounds f to digits after the point, as the summaries' figures are.
func Round(f float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(f*p+0.5)) / p
}
