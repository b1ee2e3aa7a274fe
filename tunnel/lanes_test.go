package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	mrand "math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// lanePair accepts with AcceptLanes and dials with DialLanes over loopback.
func lanePair(t *testing.T, o LaneOptions) (client, server *Conn, addr string) {
	t.Helper()
	cid, sid := ident(t), ident(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := AcceptLanes(ctx, ln, sid, cid.Pin(), func(err error) { t.Logf("refused: %v", err) })
		ch <- res{c, err}
	}()
	client, err = DialLanes(ctx, ln.Addr().String(), cid, sid.Pin(), o)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.c.Close() })
	return client, r.c, ln.Addr().String()
}

func waitLanes(t *testing.T, c *Conn, want int) {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for c.Lanes() != want {
		if time.Now().After(end) {
			t.Fatalf("%d lanes, want %d", c.Lanes(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sendRandom writes n random bytes to w in writes of random sizes and
// returns their SHA-256.
func sendRandom(w io.Writer, n int, seed uint64) ([32]byte, error) {
	rng := mrand.New(mrand.NewPCG(seed, seed))
	h := sha256.New()
	buf := make([]byte, 300<<10)
	for n > 0 {
		k := min(n, 1+rng.IntN(len(buf)))
		rand.Read(buf[:k])
		h.Write(buf[:k])
		if _, err := w.Write(buf[:k]); err != nil {
			return [32]byte{}, err
		}
		n -= k
	}
	return [32]byte(h.Sum(nil)), nil
}

func hashAll(r io.Reader, n int64) ([32]byte, error) {
	h := sha256.New()
	_, err := io.CopyN(h, r, n)
	return [32]byte(h.Sum(nil)), err
}

func TestLanesCarryBothWaysInOrder(t *testing.T) {
	client, server, addr := lanePair(t, LaneOptions{Lanes: 4, LongRTT: 0})
	waitLanes(t, client, 4)
	waitLanes(t, server, 4)
	exchange(t, client, server, 24<<20, 3<<20, false)

	// The peer's close is the end of the stream, after its last byte.
	if err := client.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := server.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
	// Every lane joined: the listener is closed, no stranger can join.
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the listener still accepts after every lane joined")
	}
}

// exchange sends up bytes from client to server and down bytes back at
// the same time and checks that each side read what the other wrote. With
// stall, the server reads nothing until the client is stuck.
func exchange(t *testing.T, client, server *Conn, up, down int, stall bool) {
	t.Helper()
	var wg sync.WaitGroup
	var upSent, downSent, upGot, downGot [32]byte
	var errs [4]error
	wg.Add(4)
	go func() { defer wg.Done(); upSent, errs[0] = sendRandom(client, up, 1) }()
	go func() {
		defer wg.Done()
		if stall {
			last := int64(-1)
			for n := client.WireBytes(); n != last; n = client.WireBytes() {
				last = n
				time.Sleep(100 * time.Millisecond)
			}
		}
		upGot, errs[1] = hashAll(server, int64(up))
	}()
	go func() { defer wg.Done(); downSent, errs[2] = sendRandom(server, down, 2) }()
	go func() { defer wg.Done(); downGot, errs[3] = hashAll(client, int64(down)) }()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	if upSent != upGot || downSent != downGot {
		t.Fatal("the bytes read are not the bytes written, in order")
	}
	if w := client.WireBytes(); w < int64(up+down) {
		t.Errorf("WireBytes %d, less than the %d bytes carried", w, up+down)
	}
}

// pipeLanes is a channel of n lanes over net.Pipe (no buffer at all, so a
// lane whose peer reads nothing blocks at once), without DialLanes.
func pipeLanes(t *testing.T, n int) (client, server *Conn) {
	cid, sid := ident(t), ident(t)
	var cs, ss *stripe
	for i := range n {
		a, b := net.Pipe()
		ch := make(chan *Conn, 1)
		go func() {
			c, err := ServerOver(context.Background(), b, sid, cid.Pin())
			if err != nil {
				t.Error(err)
			}
			ch <- c
		}()
		c, err := ClientOver(context.Background(), a, cid, sid.Pin())
		if err != nil {
			t.Fatal(err)
		}
		sc := <-ch
		if sc == nil {
			t.FailNow()
		}
		if i == 0 {
			cs, ss = newStripe(c, n, func() {}), newStripe(sc, n, func() {})
			continue
		}
		cs.add(c)
		ss.add(sc)
	}
	cs.joined()
	ss.joined()
	client, server = &Conn{Conn: cs.lanes[0].Conn, Meter: cs.lanes[0].Meter, lanes: cs}, &Conn{Conn: ss.lanes[0].Conn, Meter: ss.lanes[0].Meter, lanes: ss}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestLanesSpillOverWhenTheFirstIsFull(t *testing.T) {
	client, server := pipeLanes(t, 4)
	// The server reads nothing until the client is stuck: the first lane
	// fills (with the reader's window), and the chunks after it go to the
	// others, out of order; the reader puts them back in order.
	exchange(t, client, server, 24<<20, 3<<20, true)
	busy := 0
	for i, l := range client.lanes.all() {
		t.Logf("lane %d: out %d", i, l.Meter.Out.Load())
		if l.Meter.Out.Load() > laneChunk {
			busy++
		}
	}
	if busy < 3 {
		t.Errorf("%d of 4 lanes carried a chunk or more with the first one full: the chunks did not spill over", busy)
	}
}

func TestLanesTrickleStaysOnTheFirstLane(t *testing.T) {
	client, server, _ := lanePair(t, LaneOptions{Lanes: 4, LongRTT: 0})
	waitLanes(t, client, 4)
	base := make([]int64, 4)
	for i, l := range client.lanes.all() {
		base[i] = l.WireBytes()
	}
	// A question and its answer at a time: the writer, not the link,
	// holds the pace.
	msg := make([]byte, 4<<10)
	for range 200 {
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, msg); err != nil {
			t.Fatal(err)
		}
	}
	for i, l := range client.lanes.all() {
		if got := l.WireBytes() - base[i]; i > 0 && got > 0 {
			t.Errorf("lane %d carried %d bytes of a trickle the first lane had room for", i, got)
		}
	}
}

func TestLanesOneOnAShortLink(t *testing.T) {
	client, server, _ := lanePair(t, LaneOptions{Lanes: 4, LongRTT: time.Hour})
	if client.lanes != nil || server.lanes != nil || client.Lanes() != 1 || server.Lanes() != 1 {
		t.Fatalf("lanes %d/%d on loopback below LongRTT, want one connection as it is", client.Lanes(), server.Lanes())
	}
	go sendRandom(client, 1<<20, 3)
	if _, err := hashAll(server, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// rawLanes accepts with AcceptLanes while the test plays the dialler by
// hand: it opens pinned connections and writes their hellos and chunks.
type rawLanes struct {
	t        *testing.T
	cid, sid *Identity
	addr     string
	server   chan *Conn
	refused  chan error
}

func newRawLanes(t *testing.T) *rawLanes {
	r := &rawLanes{t: t, cid: ident(t), sid: ident(t), server: make(chan *Conn, 1), refused: make(chan error, 16)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r.addr = ln.Addr().String()
	go func() {
		c, err := AcceptLanes(context.Background(), ln, r.sid, r.cid.Pin(), func(err error) { r.refused <- err })
		if err != nil {
			t.Error(err)
		}
		r.server <- c
		if c != nil {
			t.Cleanup(func() { c.Close() })
		}
	}()
	return r
}

func (r *rawLanes) lane(hello []byte) *Conn {
	r.t.Helper()
	c, err := Dial(context.Background(), r.addr, r.cid, r.sid.Pin())
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	if _, err := c.Conn.Write(hello); err != nil {
		r.t.Fatal(err)
	}
	return c
}

func chunk(seq uint64, data string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, seq)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func TestLanesReorder(t *testing.T) {
	r := newRawLanes(t)
	h := laneHello{count: 2}
	rand.Read(h.nonce[:])
	l0 := r.lane(h.bytes())
	srv := <-r.server
	h.index = 1
	l1 := r.lane(h.bytes())
	waitLanes(t, srv, 2)
	// The second chunk arrives first, on the other lane.
	l1.Conn.Write(chunk(1, "world"))
	time.Sleep(50 * time.Millisecond)
	l0.Conn.Write(chunk(0, "hello "))
	got := make([]byte, 11)
	if _, err := io.ReadFull(srv, got); err != nil || string(got) != "hello world" {
		t.Fatalf("read %q, %v; want the chunks in sequence, %q", got, err, "hello world")
	}
}

func TestLanesRefuseStrangers(t *testing.T) {
	r := newRawLanes(t)
	// A pinned connection with no hello does not become the channel.
	r.lane([]byte("GET / HTTP/1.0\r\n\r\n...."))
	if err := <-r.refused; !errors.Is(err, ErrLanes) {
		t.Fatalf("refused with %v, want ErrLanes", err)
	}
	h := laneHello{count: 3}
	rand.Read(h.nonce[:])
	r.lane(h.bytes())
	srv := <-r.server
	other := h
	other.nonce[0] ^= 1
	other.index = 1
	r.lane(other.bytes()) // another channel's lane
	r.lane(h.bytes())     // lane 0 again
	for range 2 {
		if err := <-r.refused; !errors.Is(err, ErrLanes) || !strings.Contains(err.Error(), "not one this channel is missing") {
			t.Fatalf("refused with %v, want a lane this channel is not missing", err)
		}
	}
	if n := srv.Lanes(); n != 1 {
		t.Fatalf("%d lanes after two strangers, want 1", n)
	}
	h.index = 2
	r.lane(h.bytes())
	waitLanes(t, srv, 2)
}

func TestLanesBadChunks(t *testing.T) {
	big := strings.Repeat("x", laneChunk+1)
	for _, tc := range []struct {
		name   string
		chunks [][]byte
		want   string
	}{
		{"empty chunk", [][]byte{chunk(0, "")}, "a chunk of 0 bytes"},
		{"oversized chunk", [][]byte{chunk(0, big)}, "a chunk of 131073 bytes"},
		{"a chunk again", [][]byte{chunk(0, "a"), chunk(1, "b"), chunk(1, "c")}, "chunk 1 again"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRawLanes(t)
			h := laneHello{count: 2}
			rand.Read(h.nonce[:])
			l0 := r.lane(h.bytes())
			srv := <-r.server
			for _, c := range tc.chunks {
				l0.Conn.Write(c)
			}
			_, err := io.ReadAll(srv)
			if !errors.Is(err, ErrLanes) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read error %v, want ErrLanes: %s", err, tc.want)
			}
		})
	}
}

// oneLane is a stripe that reads a single lane from r, with no lane to
// join: the reading half alone, without TLS.
func oneLane(r io.Reader) *stripe {
	s := &stripe{pending: map[uint64][]byte{}, readers: 1, stopJoin: func() {}}
	s.rcond = sync.NewCond(&s.rmu)
	go s.readLane(r)
	return s
}

func TestLanesMissingChunk(t *testing.T) {
	// Chunks 1.. fill the window on the only lane; chunk 0 cannot come.
	var in bytes.Buffer
	data := strings.Repeat("y", laneChunk)
	for seq := uint64(1); seq <= laneWindow/laneChunk+1; seq++ {
		in.Write(chunk(seq, data))
	}
	s := oneLane(&in)
	done := make(chan error, 1)
	go func() {
		_, err := s.read(make([]byte, 10))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLanes) || !strings.Contains(err.Error(), "chunk 0 is missing") {
			t.Fatalf("read error %v, want chunk 0 missing", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read waits for ever for a chunk no lane can bring")
	}
	if s.held > laneWindow {
		t.Errorf("held %d bytes out of order, more than the window %d", s.held, laneWindow)
	}
}

// refChunks is what one lane's bytes should read as: the chunks until the
// first bad one, delivered in sequence from 0 while there is no gap, and
// whether the lane ended cleanly with nothing left over.
func refChunks(b []byte) (out []byte, clean bool) {
	got := map[uint64][]byte{}
	ok := true
	for len(b) > 0 {
		if len(b) < chunkHeader {
			ok = false
			break
		}
		seq := binary.LittleEndian.Uint64(b)
		n := int(binary.LittleEndian.Uint32(b[8:]))
		if n < 1 || n > laneChunk || len(b) < chunkHeader+n || got[seq] != nil {
			ok = false
			break
		}
		got[seq] = b[chunkHeader : chunkHeader+n]
		b = b[chunkHeader+n:]
	}
	seq := uint64(0)
	for ; got[seq] != nil; seq++ {
		out = append(out, got[seq]...)
	}
	return out, ok && len(got) == int(seq)
}

func FuzzLaneChunks(f *testing.F) {
	f.Add(append(chunk(0, "hello "), chunk(1, "world")...))
	f.Add(append(chunk(1, "world"), chunk(0, "hello ")...))
	f.Add(append(chunk(0, "a"), chunk(0, "b")...))
	f.Add(chunk(2, "gap"))
	f.Add(chunk(0, "short")[:15])
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255})
	f.Fuzz(func(t *testing.T, b []byte) {
		want, clean := refChunks(b)
		s := oneLane(bytes.NewReader(b))
		var got []byte
		buf := make([]byte, 7)
		var err error
		for {
			var n int
			n, err = s.read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %q, want %q", got, want)
		}
		if (err == io.EOF) != clean {
			t.Fatalf("ended with %v; a clean end: %v", err, clean)
		}
	})
}

func FuzzLaneHello(f *testing.F) {
	f.Add(laneHello{index: 1, count: 4}.bytes())
	f.Add([]byte("nbl1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHello(b)
		if err != nil {
			if !errors.Is(err, ErrLanes) {
				t.Fatalf("error %v is not ErrLanes", err)
			}
			return
		}
		if h.count < 1 || h.count > MaxLanes || h.index >= h.count || !bytes.Equal(h.bytes(), b) {
			t.Fatalf("parseHello(%x) = %+v", b, h)
		}
	})
}
