package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nbship/nbship/internal/tcpinfo"
)

// Lanes: one channel over several TCP connections.
//
// One TCP connection over a long link spends its first round trips in slow
// start, loses a burst of packets where it overshoots the bottleneck's
// queue, and recovers from each loss at the pace of its round trip: on the
// rig's 100 ms, 100 Mbit/s link one connection moves 52 MB in 5.85 s, four
// side by side in 5.16 s (docs/design.md, "Lanes"). So where the TCP
// handshake says the link is long, DialLanes opens more connections (lanes)
// to the same receiver, each its own TLS handshake with the same pins, and
// the channel's bytes are cut into chunks that go out on whichever lane
// has room; the reader puts them back in order.
//
// Every lane starts with a hello from the dialler: a magic, a nonce that
// is the same on every lane of one channel (so lanes of two channels, say
// of a retry and the attempt it replaced, cannot mix even though they
// carry the same certificates), the lane's index and the number of lanes.
// With one lane the channel's bytes follow as they are; with more, as
// chunks: an 8-byte sequence number, a 4-byte length (1 to laneChunk) and
// that many bytes. Both are little-endian.

const (
	// DefaultLanes is how many connections DialLanes opens to a peer
	// whose TCP handshake took LongRTT or more.
	DefaultLanes = 4
	// LongRTT is the round trip from which a link gets lanes. Below it
	// slow start is over in a few milliseconds and one connection fills
	// what the link carries.
	LongRTT = 5 * time.Millisecond
	// MaxLanes bounds the lanes a peer may announce.
	MaxLanes = 16

	laneChunk   = 128 << 10       // largest chunk
	laneWindow  = 16 << 20        // bytes a reader holds out of order, at most
	laneHeld    = 4096            // chunks a reader holds out of order, at most
	laneQueue   = 2               // chunks waiting for a lane's writer, at most
	closeFlush  = 5 * time.Second // Close waits this long for queued chunks
	helloLen    = 4 + 16 + 1 + 1
	chunkHeader = 8 + 4
)

var laneMagic = [4]byte{'n', 'b', 'l', '1'}

// ErrLanes is a lane that broke the rules of the lanes above (its hello or
// a chunk header).
var ErrLanes = errors.New("tunnel: bad lane")

type laneHello struct {
	nonce        [16]byte
	index, count int
}

func (h laneHello) bytes() []byte {
	b := make([]byte, 0, helloLen)
	b = append(b, laneMagic[:]...)
	b = append(b, h.nonce[:]...)
	return append(b, byte(h.index), byte(h.count))
}

func parseHello(b []byte) (laneHello, error) {
	var h laneHello
	if len(b) != helloLen || [4]byte(b[:4]) != laneMagic {
		return h, fmt.Errorf("%w: no lane hello (a sender of another nbship version?)", ErrLanes)
	}
	copy(h.nonce[:], b[4:20])
	h.index, h.count = int(b[20]), int(b[21])
	if h.count < 1 || h.count > MaxLanes || h.index >= h.count {
		return h, fmt.Errorf("%w: lane %d of %d", ErrLanes, h.index, h.count)
	}
	return h, nil
}

// readHello reads a lane's hello by deadline.
func readHello(c *Conn, deadline time.Time) (laneHello, error) {
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		return laneHello{}, err
	}
	b := make([]byte, helloLen)
	if _, err := io.ReadFull(c.Conn, b); err != nil {
		return laneHello{}, fmt.Errorf("tunnel: reading the lane hello: %w", err)
	}
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return laneHello{}, err
	}
	return parseHello(b)
}

// LaneOptions says how many lanes DialLanes opens, and from which round
// trip.
type LaneOptions struct {
	Lanes   int           // at most this many (below 2: one)
	LongRTT time.Duration // when the TCP handshake took at least this
}

// DialLanes is Dial for AcceptLanes: it connects to addr, and when the TCP
// handshake took o.LongRTT or more, opens o.Lanes-1 more connections at
// once (while the first one's TLS handshake runs) and returns a Conn over
// all of them. A lane that cannot be opened is left out: the channel runs
// on the lanes there are. Lanes join for at most HandshakeTimeout.
func DialLanes(ctx context.Context, addr string, id *Identity, peerPin string, o LaneOptions) (*Conn, error) {
	d := net.Dialer{KeepAliveConfig: keepAlive, Control: setUserTimeout}
	raw, err := dialTCP(ctx, &d, addr)
	if err != nil {
		return nil, err
	}
	n := 1
	if o.Lanes > 1 {
		if tc, ok := raw.(*net.TCPConn); ok {
			if info, ok := tcpinfo.Read(tc); ok && info.MinRTT >= o.LongRTT {
				n = min(o.Lanes, MaxLanes)
			}
		}
	}
	h := laneHello{count: n}
	rand.Read(h.nonce[:])

	// The other lanes dial now, beside the first one's TLS handshake;
	// they have their own deadline (ctx may end as soon as this returns).
	jctx, jcancel := context.WithTimeout(context.WithoutCancel(ctx), HandshakeTimeout)
	extra := make(chan *Conn, n)
	for i := 1; i < n; i++ {
		go func() {
			hi := h
			hi.index = i
			extra <- dialLane(jctx, &d, addr, id, peerPin, hi)
		}()
	}
	drop := func() {
		jcancel()
		for i := 1; i < n; i++ {
			if c := <-extra; c != nil {
				c.Close()
			}
		}
	}
	c, err := ClientOver(ctx, raw, id, peerPin)
	if err == nil {
		_, err = c.Conn.Write(h.bytes())
		if err != nil {
			c.Close()
			err = fmt.Errorf("tunnel: %w", err)
		}
	}
	if err != nil {
		raw.Close()
		drop()
		return nil, err
	}
	if n == 1 {
		jcancel()
		return c, nil
	}
	s := newStripe(c, n, jcancel)
	go func() {
		defer s.joined()
		for i := 1; i < n; i++ {
			if lc := <-extra; lc != nil && !s.add(lc) {
				lc.Close()
			}
		}
	}()
	return &Conn{Conn: c.Conn, Meter: c.Meter, lanes: s}, nil
}

// dialTCP connects to addr, trying again while the connection is refused
// (a listener a moment late), until ctx ends.
func dialTCP(ctx context.Context, d *net.Dialer, addr string) (net.Conn, error) {
	for {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, &DialError{Addr: addr, Err: err}
		}
		select {
		case <-ctx.Done():
			return nil, &DialError{Addr: addr, Err: errors.New("connection refused until the deadline")}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dialLane opens one more lane (nil when it cannot).
func dialLane(ctx context.Context, d *net.Dialer, addr string, id *Identity, peerPin string, h laneHello) *Conn {
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil
	}
	c, err := ClientOver(ctx, raw, id, peerPin)
	if err == nil {
		if _, err = c.Conn.Write(h.bytes()); err != nil {
			c.Close()
		}
	}
	if err != nil {
		raw.Close()
		return nil
	}
	return c
}

// AcceptLanes is Accept for DialLanes: it returns the channel as soon as
// its first lane is there, and goes on accepting the others on ln in the
// background for up to HandshakeTimeout; it closes ln once no lane can
// join any more (all joined, the time is up, the peer closed the channel,
// or the Conn is closed). A pinned connection whose hello is bad, or
// names another channel or a lane already there, is refused like a
// failed handshake.
func AcceptLanes(ctx context.Context, ln net.Listener, id *Identity, peerPin string, refused func(error)) (*Conn, error) {
	lctx, lcancel := context.WithCancel(context.WithoutCancel(ctx))
	first := make(chan *Conn, 1)
	loopDone := make(chan error, 1)
	var s *stripe
	var nonce [16]byte
	seen := map[int]bool{}
	after := func(c *Conn, deadline time.Time) (err error) {
		c.hello, err = readHello(c, deadline)
		return err
	}
	take := func(c *Conn) bool {
		if s == nil && len(seen) == 0 {
			seen[c.hello.index] = true
			if c.hello.count == 1 {
				first <- c
				return true
			}
			nonce = c.hello.nonce
			s = newStripe(c, c.hello.count, lcancel)
			first <- &Conn{Conn: c.Conn, Meter: c.Meter, lanes: s}
			return false
		}
		if c.hello.nonce != nonce || seen[c.hello.index] || c.hello.count != s.count {
			c.Close()
			if refused != nil {
				refused(fmt.Errorf("refused %s: %w: lane %d of %d, not one this channel is missing", c.RemoteAddr(), ErrLanes, c.hello.index, c.hello.count))
			}
			return false
		}
		seen[c.hello.index] = true
		if !s.add(c) {
			c.Close()
			return true
		}
		return len(seen) == s.count
	}
	go func() {
		loopDone <- acceptLoop(lctx, ln, id, peerPin, refused, after, take)
	}()
	stop := context.AfterFunc(ctx, lcancel) // until the first lane is there
	select {
	case c := <-first:
		stop()
		if c.lanes == nil {
			<-loopDone
			lcancel()
			return c, nil
		}
		timer := time.AfterFunc(HandshakeTimeout, lcancel)
		go func() {
			<-loopDone
			timer.Stop()
			ln.Close()
			c.lanes.joined()
		}()
		return c, nil
	case err := <-loopDone:
		stop()
		lcancel()
		select {
		case c := <-first: // came just as the loop ended
			if c.lanes == nil {
				return c, nil
			}
			c.lanes.joined()
			return c, nil
		default:
		}
		return nil, acceptFailed(ctx, ln, peerPin, err)
	}
}

// stripe is the state of a channel over several lanes.
type stripe struct {
	count    int
	stopJoin func()

	mu       sync.Mutex
	lanes    []*Conn
	queues   []chan *laneJob // each lane's own, in the order they joined
	closed   bool
	joinDone chan struct{} // closed when no lane can join any more
	werr     error         // the first write error
	done     chan struct{} // closed by close or the first write error

	// Writing: Write cuts its bytes into jobs, one per chunk. A job goes
	// to the first lane (in the order they joined) whose own queue has
	// room, else to work, which every lane's writer takes from when its
	// own queue is empty. So a lane is only used when those before it are
	// busy: while the link is faster than the writer, the first lane
	// carries everything and the others stay out of its way (spreading
	// a trickle over all of them would leave each one's window small, and
	// each would restart slow start after every pause); when it is full,
	// the next one takes the rest.
	wmu  sync.Mutex
	wseq uint64
	work chan *laneJob
	// queued is the bytes of chunks handed to the lanes and not yet
	// written to their connections; flushed is signalled (under mu) when
	// it drops to nothing.
	queued        atomic.Int64
	flushed       *sync.Cond
	flushTimedOut bool

	// Reading: each lane's reader puts chunks in pending; Read takes them
	// in sequence.
	rmu     sync.Mutex
	rcond   *sync.Cond
	next    uint64
	pending map[uint64][]byte
	cur     []byte
	held    int  // bytes in pending and cur
	readers int  // lane readers still reading
	waiting int  // of them, waiting for room (see room)
	joining bool // lanes may still join
	rerr    error
	rclosed bool
}

// laneJob is a chunk, its header included.
type laneJob struct {
	data []byte
}

func newStripe(first *Conn, count int, stopJoin func()) *stripe {
	s := &stripe{
		count:    count,
		stopJoin: stopJoin,
		joinDone: make(chan struct{}),
		done:     make(chan struct{}),
		work:     make(chan *laneJob),
		pending:  map[uint64][]byte{},
		joining:  true,
	}
	s.rcond = sync.NewCond(&s.rmu)
	s.flushed = sync.NewCond(&s.mu)
	s.add(first)
	return s
}

// add puts lane c to work; false when the channel is closed.
func (s *stripe) add(c *Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	q := make(chan *laneJob, laneQueue)
	s.lanes = append(s.lanes, c)
	s.queues = append(s.queues, q)
	s.rmu.Lock()
	s.readers++
	s.rmu.Unlock()
	go s.readLane(c.Conn)
	go s.writeLane(c, q)
	return true
}

// joined says that no lane will join any more.
func (s *stripe) joined() {
	s.rmu.Lock()
	s.joining = false
	s.rcond.Broadcast()
	s.rmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.joinDone:
	default:
		close(s.joinDone)
	}
}

func (s *stripe) all() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Conn(nil), s.lanes...)
}

// writev copies bufs into chunks and hands them to the lanes (see work),
// returning once each is queued: the lanes' writers send them while the
// caller goes on, so that one lane stuck on a full socket does not hold
// up the next chunks, which go to another. At most laneQueue chunks wait
// per lane, plus one in work; writev waits for room beyond that. A lane's
// write error fails the channel: this and every later write returns it.
func (s *stripe) writev(bufs [][]byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.writeErr(); err != nil {
		return 0, err
	}
	total := 0
	for _, b := range bufs {
		total += len(b)
	}
	var j *laneJob
	for _, b := range bufs {
		for len(b) > 0 {
			if j == nil {
				j = &laneJob{data: make([]byte, chunkHeader, chunkHeader+min(laneChunk, total))}
			}
			k := min(len(b), chunkHeader+laneChunk-len(j.data))
			j.data = append(j.data, b[:k]...)
			b = b[k:]
			total -= k
			if len(j.data) == chunkHeader+laneChunk {
				if !s.queue(j) {
					return 0, s.writeErr()
				}
				j = nil
			}
		}
	}
	if j != nil && !s.queue(j) {
		return 0, s.writeErr()
	}
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n, nil
}

// writeErr is why the channel takes no more writes (nil: it does).
func (s *stripe) writeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.werr != nil {
		return s.werr
	}
	if s.closed {
		return net.ErrClosed
	}
	return nil
}

// queue hands j to a lane (see work); false when the channel ended.
func (s *stripe) queue(j *laneJob) bool {
	binary.LittleEndian.PutUint64(j.data[:8], s.wseq)
	binary.LittleEndian.PutUint32(j.data[8:chunkHeader], uint32(len(j.data)-chunkHeader))
	s.wseq++
	s.queued.Add(int64(len(j.data)))
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		s.written(j)
		return false
	default:
	}
	for _, q := range s.queues {
		select {
		case q <- j:
			s.mu.Unlock()
			return true
		default:
		}
	}
	s.mu.Unlock()
	select {
	case s.work <- j:
		return true
	case <-s.done:
		s.written(j)
		return false
	}
}

// written takes j off what is queued; flush waits for that to be nothing.
func (s *stripe) written(j *laneJob) {
	if s.queued.Add(-int64(len(j.data))) == 0 {
		s.mu.Lock()
		s.flushed.Broadcast()
		s.mu.Unlock()
	}
}

// flush waits until every queued chunk was written or the channel failed,
// at most closeFlush.
func (s *stripe) flush() {
	timer := time.AfterFunc(closeFlush, func() {
		s.mu.Lock()
		s.flushTimedOut = true
		s.flushed.Broadcast()
		s.mu.Unlock()
	})
	defer timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.queued.Load() > 0 && s.werr == nil && !s.flushTimedOut {
		s.flushed.Wait()
	}
}

// writeLane writes the chunks it takes to lane c until the channel ends:
// from its own queue first, so that its chunks go out in sequence (a job
// waits in work only while queue is blocked on it, after every job
// already in an own queue). When the channel ends it fails what is left
// in its queue, under mu, after which queue adds nothing to it.
func (s *stripe) writeLane(c *Conn, own chan *laneJob) {
	defer func() {
		s.mu.Lock()
		var left []*laneJob
		for len(own) > 0 {
			left = append(left, <-own)
		}
		s.mu.Unlock()
		for _, j := range left {
			s.written(j)
		}
	}()
	for {
		var j *laneJob
		select {
		case j = <-own:
		default:
			select {
			case j = <-own:
			case j = <-s.work:
			case <-s.done:
				return
			}
		}
		_, err := c.Write(j.data)
		s.written(j)
		if err != nil {
			s.fail(err)
			return
		}
	}
}

// fail ends the channel's writing for good after err.
func (s *stripe) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.werr == nil && !s.closed {
		s.werr = err
	}
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

// readLane reads a lane's chunks into pending until it ends.
func (s *stripe) readLane(r io.Reader) {
	hdr := make([]byte, chunkHeader)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			s.laneEnded(err)
			return
		}
		seq := binary.LittleEndian.Uint64(hdr[:8])
		n := int(binary.LittleEndian.Uint32(hdr[8:]))
		if n < 1 || n > laneChunk {
			s.laneEnded(fmt.Errorf("%w: a chunk of %d bytes (1 to %d allowed)", ErrLanes, n, laneChunk))
			return
		}
		if err := s.room(seq, n); err != nil {
			s.laneEnded(err)
			return
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			s.laneEnded(err)
			return
		}
		s.rmu.Lock()
		if seq < s.next || s.pending[seq] != nil {
			s.rmu.Unlock()
			s.laneEnded(fmt.Errorf("%w: chunk %d again", ErrLanes, seq))
			return
		}
		s.pending[seq] = b
		s.held += n
		s.rcond.Broadcast()
		s.rmu.Unlock()
	}
}

// room waits until chunk seq of n bytes may be read: at once when it is
// the next one; else when what is held out of order leaves room for it.
// Each lane's chunks come in sequence, so the next chunk is always the next
// one on some lane, whose reader does not wait here: when every lane's
// reader waits (and no lane can join) the next chunk was never sent.
func (s *stripe) room(seq uint64, n int) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for seq != s.next && (s.held+n > laneWindow || len(s.pending) >= laneHeld) && s.rerr == nil && !s.rclosed {
		if _, has := s.pending[s.next]; !has && s.waiting+1 >= s.readers && !s.joining {
			return fmt.Errorf("%w: chunk %d is missing (every lane is past it)", ErrLanes, s.next)
		}
		s.waiting++
		s.rcond.Wait()
		s.waiting--
	}
	if seq < s.next || s.pending[seq] != nil {
		return fmt.Errorf("%w: chunk %d again", ErrLanes, seq)
	}
	return nil
}

// laneEnded records that a lane's reader stopped with err. io.EOF (the
// peer closed the lane after its last chunk) also means the peer closed
// the channel: no lane will join after it.
func (s *stripe) laneEnded(err error) {
	s.rmu.Lock()
	s.readers--
	if err == io.EOF {
		s.joining = false
	} else if s.rerr == nil {
		s.rerr = err
	}
	s.rcond.Broadcast()
	s.rmu.Unlock()
	if err == io.EOF {
		s.stopJoin()
	}
}

func (s *stripe) read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for {
		if len(s.cur) > 0 {
			n := copy(p, s.cur)
			s.cur = s.cur[n:]
			s.held -= n
			s.rcond.Broadcast()
			return n, nil
		}
		if b, ok := s.pending[s.next]; ok {
			delete(s.pending, s.next)
			s.next++
			s.cur = b
			continue
		}
		if s.rclosed {
			return 0, net.ErrClosed
		}
		if s.rerr != nil {
			return 0, s.rerr
		}
		if s.readers == 0 && !s.joining {
			if len(s.pending) > 0 {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		s.rcond.Wait()
	}
}

// close writes out what is queued (for at most closeFlush), closes every
// lane (close_notify after each one's last chunk), and returns once no
// lane can join any more.
func (s *stripe) close() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil
	}
	s.flush()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	werr := s.werr
	lanes := s.lanes
	select {
	case <-s.done:
	default:
		close(s.done)
	}
	s.mu.Unlock()
	s.stopJoin()
	var first error
	for _, c := range lanes {
		if err := c.Close(); err != nil && first == nil {
			first = err
		}
	}
	<-s.joinDone
	s.rmu.Lock()
	s.rclosed = true
	s.rcond.Broadcast()
	s.rmu.Unlock()
	if werr != nil {
		return werr
	}
	return first
}

// breakNet closes every lane's connection without close_notify (see Watch).
func (s *stripe) breakNet() {
	s.mu.Lock()
	lanes := s.lanes
	s.mu.Unlock()
	for _, c := range lanes {
		c.Conn.NetConn().Close()
	}
}

func (s *stripe) wireBytes() int64 {
	var n int64
	for _, c := range s.all() {
		n += c.WireBytes()
	}
	return n
}

func (s *stripe) unacked() (n int, ok bool) {
	n = int(s.queued.Load())
	for i, c := range s.all() {
		k, kok := c.Unacked()
		if i == 0 {
			ok = kok
		}
		n += k
	}
	return n, ok
}

// linkInfo sums the lanes' rates, takes their smallest round trip, and
// counts the link as app-limited only when every lane was.
func (s *stripe) linkInfo() (info tcpinfo.Info, ok bool) {
	info.AppLimited = true
	for _, c := range s.all() {
		li, lok := c.LinkInfo()
		if !lok {
			continue
		}
		ok = true
		info.Rate += li.Rate
		info.AppLimited = info.AppLimited && li.AppLimited
		if info.MinRTT == 0 || li.MinRTT < info.MinRTT {
			info.MinRTT = li.MinRTT
		}
	}
	if !ok {
		return tcpinfo.Info{}, false
	}
	return info, true
}

// Lanes is how many connections the channel runs over now.
func (c *Conn) Lanes() int {
	if c.lanes == nil {
		return 1
	}
	return len(c.lanes.all())
}
