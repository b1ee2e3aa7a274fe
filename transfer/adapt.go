package transfer

// Compressing is only worth it while the link is slower than the
// compressor. On a 100 Mbit or 1 Gbit link zstd's output keeps the link
// busy and saves most of the bytes; on a link faster than the compressor
// (two hosts on a 10 Gbit LAN, or veths on one machine) the compressor is
// the bottleneck, and a kernel sent as it is arrives sooner than the same
// kernel compressed. Which case holds is not known in advance and can
// change, so big compressible files and a closure's NARs are sent in
// stretches, and before a stretch both ways are timed on the live
// connection: the compressor on a small probe, and then the link. Stored
// sends the stretch only when the link carries bytes at least twice as
// fast as the compressor takes them in; otherwise zstd does. A NAR too
// small to probe goes the way of the stretch it falls in, and compressed
// once that stretch is used up.
//
// Before the stored probe the socket's queue of earlier data must drain,
// and the compressed probe must drain within the compressor's time; the
// stored probe is timed from its first byte until the peer's TCP
// acknowledged its last (the socket's send queue, which the channel
// reports). A link with a round trip of 5 ms or more (TCP_INFO) is not
// probed: stored cannot be shown faster there. The kernel's delivery rate
// (TCP_INFO) is not used for this choice: its samples include a shaper's
// burst, and on the rig's tbf 100 Mbit link it looked faster than the
// compressor. Over a connection that is not a socket (--stdio) everything
// compressible is compressed.
//
// The other way round, a link much slower than the compressor leaves the
// CPU idle while the link is full: there zstd's better level, with a
// window big enough for binaries that repeat each other, sends a quarter
// fewer bytes of a closure in the same link time. When no level was asked
// for, big compressible data is timed through the default level, and the
// rest of the transfer goes at the better level once the link carries
// less than 1/harderCost of what the compressor makes. With TCP_INFO, the
// link's rate is the kernel's, looked at every harderCheck bytes, and the
// verdict needs two looks some round trips apart that agree (a new
// connection's slow start delivers far less than the link can, and a
// verdict taken then moved 100 ms links to the better level wrongly).
// Without it, the rate is how fast the queue the probe left drains. At the
// better level, every harderCheck bytes the socket's queue is looked at,
// and when it was found empty at most of the last harderSamples looks, the
// compressor (or the CPU it shares) has become what the transfer waits
// for, and the rest goes at the default level. A file is probed so only
// after a stored probe found the link slower than the compressor (a fast
// link, where the netboot files go stored, pays nothing for it); a NAR at
// once.

import (
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/nbship/nbship/internal/tcpinfo"
)

// unackedConn is a connection that can tell how many written bytes the
// peer has not yet acknowledged (tunnel.Conn over TCP).
type unackedConn interface {
	Unacked() (int, bool)
}

// linkConn is a connection that can tell what the kernel knows about its
// link (tunnel.Conn over TCP).
type linkConn interface {
	LinkInfo() (tcpinfo.Info, bool)
}

// holder is the stream's chunkWriter: it can gather what is written in
// memory while the compressor is timed.
type holder interface {
	hold()
	release() error
}

const (
	adaptMin  = 8 << 20   // smaller files are compressed without probing
	probeSize = 512 << 10 // bytes of a file the compressed probe sends
	leadIn    = 256 << 10 // compressed before the compressed probe, not timed
	// The stored probe is bigger: the first bytes on an idle link go
	// faster than the link's rate (its burst, the queues), which matters
	// less the more bytes follow them.
	rawProbe  = 1 << 20
	drainLow  = 64 << 10 // "acknowledged": at most this much still queued (a delayed ACK may hold the tail)
	drainPoll = 100 * time.Microsecond
	// Stored is chosen only when its probe reached the peer this many
	// times faster than the compressor alone took for the same bytes.
	storedMargin = 2
	// Before a probe the queue from earlier data must drain; a link that
	// does not drain it within this long is slow, and is left to the
	// compressor without probing.
	drainFirst = 100 * time.Millisecond
	// A link whose smallest round trip (TCP_INFO) is this long is left to
	// the compressor without probing: the compressor's default level takes
	// 1.5-3 ms for the probe, and the stored probe's last byte is
	// acknowledged a round trip after it was sent.
	longRTT = 5 * time.Millisecond

	// The level probe is bigger than the stored one: its compressed
	// output must outlast a shaped link's burst (10 ms of its rate) to
	// show the rate behind it.
	levelProbe = 2 << 20
	// harderCost is how much slower than the source and the compressor
	// the link must be for the better level: it takes 2.3-3 times the
	// default level's time per byte (the bench closure), and twice that
	// leaves room for what the probe does not see, such as a CPU shared
	// with the receiving end (on the rig at 100 Mbit the probes measured
	// the link 1.7-3.7 times slower, and the better level was then what
	// the transfer waited for; at 20 Mbit, 8 times and more).
	harderCost = 6
	// levelQueue is the least the probe must leave queued for the drain to
	// say anything about the link: less, and the link kept up with it.
	levelQueue = 2 * drainLow
	// levelFirst is how long the level probe waits for the queue of
	// earlier data to drain: longer than a stored probe, since on a link
	// known to be slow the wait costs nothing (the link is busy with it).
	levelFirst = time.Second

	// At the better level, the queue is looked at after every
	// harderCheck bytes, and judged over harderSamples looks.
	harderCheck   = 4 << 20
	harderSamples = 8

	// With TCP_INFO, a verdict of "slow" stands when a look at least
	// steadyRTTs round trips after the first finds the link's rate grown
	// by at most steadyGrowth.
	steadyRTTs   = 4
	steadyGrowth = 1.25
)

// stretch is how many bytes go the chosen way before the next probe (a
// variable for tests).
var stretch int64 = 32 << 20

// adapter makes the choice for one transfer.
type adapter struct {
	unacked func() (int, bool) // nil: the link cannot be observed; always compress
	// info reads the kernel's view of the link (nil: none; the probes
	// time the queue's drain instead).
	info func() (tcpinfo.Info, bool)
	raw  bool  // the current choice
	left int64 // bytes to send the current way before the next probe
	// sent counts the stream's bytes written to the connection.
	sent func() int64
	// leveled: the level is settled (asked for, unobservable, or moved to
	// better); until then every NAR big enough and every stretch of a big
	// file after a stored probe that found the link slow is probed, since
	// the data decides as much as the link (a NAR of 11,000 small
	// sources comes out of nix-store no faster than a 100 Mbit link takes
	// it compressed; the binaries after it three times faster).
	leveled bool
	// harder: the link is much slower than the compressor; the frames
	// are at the better level and stored is not tried.
	harder bool
	// slow: a stored probe found the link slower than the compressor,
	// which is when a file's level is worth probing.
	slow bool
	// looks and empty count the queue's looks at the better level, and
	// how many found it empty.
	looks, empty int
	// cout is the compressor's output at the default level, stream bytes
	// a second, as the last level probe timed it (with info; 0: not
	// yet). seen is the link's rate at the first of the looks that found
	// it too slow for cout, at seenAt (0: the last look did not).
	cout, seen float64
	seenAt     time.Time
}

// newAdapter makes the adapter for a transfer over conn; auto lets it
// choose the level.
func newAdapter(conn any, auto bool, sent func() int64) *adapter {
	a := &adapter{sent: sent, leveled: true}
	if u, ok := conn.(unackedConn); ok {
		if _, ok := u.Unacked(); ok {
			a.unacked = u.Unacked
			a.leveled = !auto
		}
	}
	if l, ok := conn.(linkConn); ok && a.unacked != nil {
		if _, ok := l.LinkInfo(); ok {
			a.info = l.LinkInfo
		}
	}
	return a
}

// levelPays reports whether data of size bytes is where to settle the
// level: enough of it for the probe, and not yet settled.
func (a *adapter) levelPays(size int64) bool {
	return !a.leveled && size >= 2*(leadIn+levelProbe)
}

// probeLevel sends leadIn+levelProbe bytes of r at the default level,
// timing the source and the compressor on the last levelProbe of them,
// then times the drain of what that left queued, and hardens out for the
// rest of the transfer when the link took more than harderCost times their
// time per byte. It returns how many bytes of r it sent.
func (a *adapter) probeLevel(out *frames, r *fileReader) (int64, error) {
	n0 := r.n
	a.slow = false
	// With the kernel's view the probe is timed in memory and the link's
	// rate read after; without it, the queue the probe leaves is the
	// link's measure, so it goes out as it is made, once earlier data
	// has drained.
	first := levelFirst
	if a.info != nil {
		first = 0
	}
	written, produced, err := a.timedCompressed(out, r, first, levelProbe)
	if err != nil || written == 0 {
		// written 0: a backlog from earlier data that will not drain,
		// no rate to measure this time.
		return r.n - n0, err
	}
	if a.info != nil {
		a.cout = float64(produced) / written.Seconds()
		return r.n - n0, a.judge(out)
	}
	queued, ok := a.unacked()
	if !ok || queued < levelQueue || produced <= 0 {
		return r.n - n0, nil
	}
	// The link carries the queue at its rate; the compressor made
	// produced bytes in written. Harder pays if draining the queue (all
	// but drainLow of it) takes longer than harderCost times the
	// compressor's time for as many bytes.
	budget := time.Duration(harderCost * float64(written) * float64(queued-drainLow) / float64(produced))
	if a.drain(budget) {
		return r.n - n0, nil
	}
	a.harder, a.leveled = true, true
	return r.n - n0, out.setLevel(zstd.SpeedBetterCompression, harderWindow)
}

// timedCompressed sends leadIn bytes of r compressed, not timed (the
// encoder's first blocks cost it several times what later ones do: its
// tables and window are being allocated and touched), and size more, timed
// up to the flush that hands them all on. It returns that time (0: nothing
// was sent) and how many stream bytes the timed part made. It first waits
// up to first for the queue of earlier data to drain (not draining: 0), so
// that the link does not hold the compressor up. With first 0 it does not
// wait: the timed part is gathered in memory, where the stream can, and
// written after, so that the time is the compressor's alone.
func (a *adapter) timedCompressed(out *frames, r *fileReader, first time.Duration, size int64) (time.Duration, int64, error) {
	h, held := out.cw.(holder)
	held = held && first == 0
	if first > 0 && !a.drain(first) {
		return 0, 0, nil
	}
	w, err := out.compressed()
	if err != nil {
		return 0, 0, err
	}
	if err := r.send(w, leadIn); err != nil {
		return 0, 0, err
	}
	if held {
		// The encoder's output of the lead-in goes out before the hold
		// (its goroutines write it).
		if err := out.flush(); err != nil {
			return 0, 0, err
		}
		h.hold()
	}
	t0, c0 := time.Now(), a.sent()
	if err := r.send(w, size); err != nil {
		return 0, 0, err
	}
	if err := out.flush(); err != nil {
		return 0, 0, err
	}
	d := max(time.Since(t0), 1)
	if held {
		if err := h.release(); err != nil {
			return 0, 0, err
		}
	}
	return d, a.sent() - c0, nil
}

// piece is how much of size to send before the next look at the link.
func (a *adapter) piece(size int64) int64 {
	if a.harder || a.judging() {
		return min(size, harderCheck)
	}
	return size
}

// judging: the level is not settled, and the link's rate is looked at
// after every piece (with the kernel's view, once the compressor's is
// known).
func (a *adapter) judging() bool {
	return a.info != nil && !a.leveled && a.cout > 0
}

// judge compares the link's rate, as the kernel measured it, with the
// compressor's output at the default level, and settles on the better
// level when the link carries less than 1/harderCost of it at two looks
// steadyRTTs round trips or more apart, the rate grown by at most
// steadyGrowth between them. A rate the sender held down (app-limited)
// says the link keeps up.
func (a *adapter) judge(out *frames) error {
	if !a.judging() {
		return nil
	}
	info, ok := a.info()
	if !ok || info.AppLimited || info.Rate <= 0 || info.Rate*harderCost >= a.cout {
		a.seen = 0
		return nil
	}
	switch {
	case a.seen == 0 || info.Rate > a.seen*steadyGrowth:
		a.seen, a.seenAt = info.Rate, time.Now()
		return nil
	case time.Since(a.seenAt) < steadyRTTs*max(info.MinRTT, time.Millisecond):
		return nil
	}
	a.harder, a.leveled = true, true
	return out.setLevel(zstd.SpeedBetterCompression, harderWindow)
}

// look checks, while the level is not settled, whether it should be
// (judge), and at the better level, whether the link is still what the
// transfer waits for: a queue that the link emptied before the compressor
// refilled it says it is not. After harderSamples looks, mostly at an
// empty queue, the stream goes back to the default level for good.
func (a *adapter) look(out *frames) error {
	if !a.harder {
		return a.judge(out)
	}
	if n, ok := a.unacked(); !ok || n <= drainLow {
		a.empty++
	}
	if a.looks++; a.looks < harderSamples {
		return nil
	}
	starved := 2*a.empty > a.looks
	a.looks, a.empty = 0, 0
	if !starved {
		return nil
	}
	a.harder = false
	return out.setLevel(zstd.SpeedDefault, 0)
}

// drain waits until at most drainLow bytes are unacknowledged, for at most
// limit; it reports whether they were.
func (a *adapter) drain(limit time.Duration) bool {
	end := time.Now().Add(limit)
	for {
		n, ok := a.unacked()
		if !ok {
			return false
		}
		if n <= drainLow {
			return true
		}
		if !time.Now().Before(end) {
			return false
		}
		time.Sleep(drainPoll)
	}
}

// sendFile sends size bytes from r, a compressible file, into out (send).
func (a *adapter) sendFile(out *frames, r *fileReader, size int64) error {
	return a.send(out, r, size, false)
}

// sendNAR sends size bytes of r, a NAR, into out (send): its level probed
// first while it is not settled.
func (a *adapter) sendNAR(out *frames, r *fileReader, size int64) error {
	return a.send(out, r, size, true)
}

// send sends size bytes of r into out: the way the last probe chose while
// its stretch lasts, probing again when it has run out and enough of r is
// left for a probe to pay (compressed, when not enough is), the level
// probed while it is not settled (at the start of a NAR, and for a file
// after a stored probe found the link slow), and at the better level or
// while the level is being judged in pieces with a look at the link after
// each.
func (a *adapter) send(out *frames, r *fileReader, size int64, nar bool) error {
	for first := true; size > 0; first = false {
		// A NAR in a stored stretch skips the level probe: a link faster
		// than the compressor is not six times slower than it.
		if (a.slow || nar && first && !(a.raw && a.left > 0)) && a.levelPays(size) {
			n, err := a.probeLevel(out, r)
			if err != nil {
				return err
			}
			size -= n
			continue
		}
		if a.unacked != nil && !a.harder && a.left <= 0 && size >= 2*(leadIn+probeSize+rawProbe) {
			n, err := a.probe(out, r)
			if err != nil {
				return err
			}
			size -= n
			continue
		}
		k := a.piece(size)
		if a.left > 0 {
			k = min(k, a.left)
		}
		w, err := out.way(a.raw && a.left > 0)
		if err != nil {
			return err
		}
		if err := r.send(w, k); err != nil {
			return err
		}
		size -= k
		a.left -= k
		if err := a.look(out); err != nil {
			return err
		}
	}
	return nil
}

// probe sends a probe compressed, timing the compressor, and, unless the
// link could not keep up even with that, one stored, timed from its first
// byte until the peer acknowledged its last; it sets the way for the next
// stretch and returns how many bytes of the file it sent.
func (a *adapter) probe(out *frames, r *fileReader) (int64, error) {
	a.raw, a.left = false, stretch
	n0 := r.n
	// On a long link the stored probe cannot win: its last byte is
	// acknowledged a round trip after it left, later than the compressor
	// is done with the probe. Timing there went wrong besides: at the
	// start of a connection on a 100 ms link the compressed probe waited
	// round trips for the socket's buffer to grow, the stored one found
	// it grown, and the netboot files went stored (72.7 MB in place of
	// 52.4). Timing the compressed probe in memory mended that too, but
	// changed the choice on short links, where it was measured right.
	if a.info != nil {
		if info, ok := a.info(); ok && info.MinRTT >= longRTT {
			a.slow = true
			return 0, nil
		}
	}
	written, _, err := a.timedCompressed(out, r, drainFirst, probeSize)
	if err != nil || written == 0 {
		return r.n - n0, err
	}
	// Not the kernel's delivery rate: its samples include a shaper's
	// burst, and on the rig's tbf 100 Mbit link it looked faster than the
	// compressor, and the netboot files and the closure went stored
	// (72.8 MB in place of 52.7, 127-146 MB in place of 102). The link is
	// timed as it carries the probes.
	if !a.drain(written) {
		// Waiting longer for the link than the compressor took means
		// the link is the bottleneck even for compressed bytes: stored
		// would be slower.
		a.slow = true
		return r.n - n0, nil
	}
	w, err := out.stored()
	if err != nil {
		return r.n - n0, err
	}
	t1 := time.Now()
	if err := r.send(w, rawProbe); err != nil {
		return r.n - n0, err
	}
	if err := out.flush(); err != nil {
		return r.n - n0, err
	}
	// Compressing and sending overlap, so what compressed costs per byte is
	// the compressor's time, not that plus the link's. Stored must also
	// beat it by a margin: a cold encoder and the start of a file make the
	// probe's compressor slower than it will be, and going stored wrongly
	// costs the link the whole ratio (three times the bytes, for a
	// kernel), while compressing wrongly costs only the compressor's time.
	budget := time.Duration(float64(written) * rawProbe / probeSize / storedMargin)
	spent := time.Now().Sub(t1)
	a.raw = spent < budget && a.drain(budget-spent)
	return r.n - n0, nil
}

// fileReader reads one file's bytes, or one NAR's, into the stream.
type fileReader struct {
	f    io.Reader
	path string
	size int64 // as announced
	buf  []byte
	cnt  *Counters
	n    int64 // bytes read so far
	// fail makes the error for an end before size bytes (err io.EOF) or
	// a read error, n bytes in; nil: a file's.
	fail func(n int64, err error) error
}

// send copies exactly k more bytes of the file into w.
func (r *fileReader) send(w io.Writer, k int64) error {
	for k > 0 {
		n, rerr := r.f.Read(r.buf[:min(int64(len(r.buf)), k)])
		if n > 0 {
			if _, err := w.Write(r.buf[:n]); err != nil {
				return writeErr{err}
			}
			k -= int64(n)
			r.n += int64(n)
			r.cnt.Raw.Add(int64(n))
		}
		switch {
		case k == 0:
		case rerr != nil && r.fail != nil:
			return r.fail(r.n, rerr)
		case rerr == io.EOF:
			return fmt.Errorf("transfer: %s shrank while being sent (announced %d bytes, read %d); nothing was published", r.path, r.size, r.n)
		case rerr != nil:
			return fmt.Errorf("transfer: reading %s: %w", r.path, rerr)
		}
	}
	return nil
}
