package tunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// acceptSetup is what the Accept tests begin with: the server's and its
// pinned client's identities, a loopback listener and a context of 20 s,
// both ending with the test.
func acceptSetup(t *testing.T) (srv, cli *Identity, ln net.Listener, ctx context.Context) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ident(t), ident(t), ln, ctx
}

// setLimits sets the handshake limits for one test.
func setLimits(t *testing.T, timeout time.Duration, pending, perHost int) {
	t.Helper()
	ot, op, oh := HandshakeTimeout, MaxPending, MaxPendingPerHost
	HandshakeTimeout, MaxPending, MaxPendingPerHost = timeout, pending, perHost
	t.Cleanup(func() { HandshakeTimeout, MaxPending, MaxPendingPerHost = ot, op, oh })
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type acceptResult struct {
	c   *Conn
	err error
}

func acceptAsync(t *testing.T, ctx context.Context, ln net.Listener, srv *Identity, pin string, refused func(error)) chan acceptResult {
	ch := make(chan acceptResult, 1)
	go func() {
		c, err := Accept(ctx, ln, srv, pin, refused)
		ch <- acceptResult{c, err}
	}()
	return ch
}

// Whatever connects first or beside it (silent connections, garbage, a
// slow trickle, wrong certificates, dozens at once), the pinned peer gets
// through: handshakes do not wait for each other. With one handshake at a
// time, the first silent connection alone would hold the real peer for the
// whole handshake timeout, which here is longer than the test's deadline.
func TestAcceptGetsThroughAHostileCrowd(t *testing.T) {
	setLimits(t, time.Minute, 64, 8)
	srv, cli, ln, ctx := acceptSetup(t)
	addr := ln.Addr().String()
	var mu sync.Mutex
	var refusals []string
	mismatches := make(chan struct{}, 8)
	res := acceptAsync(t, ctx, ln, srv, cli.Pin(), func(err error) {
		mu.Lock()
		refusals = append(refusals, err.Error())
		mu.Unlock()
		if strings.Contains(err.Error(), "fingerprint mismatch") {
			mismatches <- struct{}{}
		}
	})

	// Silent ones, from several addresses, a few dozen in all.
	for i := range 30 {
		dialFrom(t, "127.0.0."+string(rune('2'+i%4)), addr)
	}
	// Garbage.
	for range 3 {
		c := dialFrom(t, "127.0.1.1", addr)
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	}
	// A slow trickle of something that looks like the start of TLS.
	slow := dialFrom(t, "127.0.1.2", addr)
	go func() {
		for _, b := range []byte{0x16, 0x03, 0x01, 0x02} {
			if _, err := slow.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	// Wrong certificates, concurrently.
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			defer dcancel()
			if c, err := Dial(dctx, addr, ident(t), srv.Pin()); err == nil {
				c.Read(make([]byte, 1))
				c.Close()
			}
		}()
	}
	wg.Wait()
	// A TLS 1.3 client is done before the server has checked its
	// certificate: wait until the receiver has reported all three, since
	// it reports nothing once the real peer is through.
	for range 3 {
		select {
		case <-mismatches:
		case <-ctx.Done():
			t.Fatalf("the receiver reported fewer than 3 wrong certificates")
		}
	}

	c, err := Dial(ctx, addr, cli, srv.Pin())
	if err != nil {
		t.Fatalf("the real peer's Dial: %v", err)
	}
	defer c.Close()
	r := <-res
	if r.err != nil {
		t.Fatalf("Accept = %v, want the pinned peer", r.err)
	}
	defer r.c.Close()
	got := r.c.ConnectionState().PeerCertificates[0].Raw
	if Fingerprint(got) != cli.Pin() {
		t.Fatalf("Accept returned a peer with pin %s, want %s", Fingerprint(got), cli.Pin())
	}
	go r.c.Write([]byte("ready"))
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatalf("reading from the accepted channel: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var pins int
	for _, s := range refusals {
		if strings.Contains(s, "fingerprint mismatch") {
			pins++
		}
	}
	if pins != 3 {
		t.Errorf("reported %d wrong certificates, want 3:\n%s", pins, strings.Join(refusals, "\n"))
	}
}

// A silent connection is dropped after HandshakeTimeout and reported.
func TestAcceptTimesOutASilentHandshake(t *testing.T) {
	setLimits(t, 200*time.Millisecond, 64, 8)
	srv, cli, ln, ctx := acceptSetup(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	refused := make(chan error, 4)
	res := acceptAsync(t, ctx, ln, srv, cli.Pin(), func(err error) { refused <- err })
	silent := dialFrom(t, "127.0.0.1", ln.Addr().String())
	// The receiver hangs up on it: the read ends without data.
	silent.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("silent connection read = %d, %v; want it closed by the receiver", n, err)
	}
	if err := <-refused; !strings.Contains(err.Error(), "refused 127.0.0.1:") {
		t.Errorf("refusal = %v, want one naming the address", err)
	}
	cancel()
	if r := <-res; r.err == nil {
		t.Errorf("Accept without the peer returned a connection")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Past a host's cap, its oldest pending connection is closed, and a flood
// from one address does not close another address's connections.
func TestAcceptCapsPendingPerHost(t *testing.T) {
	setLimits(t, time.Minute, 6, 2)
	srv, cli, ln, ctx := acceptSetup(t)
	addr := ln.Addr().String()
	res := acceptAsync(t, ctx, ln, srv, cli.Pin(), nil)

	other := dialFrom(t, "127.0.0.9", addr)
	var flood []net.Conn
	for range 20 {
		flood = append(flood, dialFrom(t, "127.0.0.2", addr))
	}
	// The last connection of the flood is accepted only after the ones
	// before it: once it is closed for room, all before it are settled.
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !isTimeout(err)
	}
	if !closed(flood[0]) {
		t.Fatalf("the flood's first connection is still open past the per-host cap")
	}
	// The other address's connection stays: give it a short look.
	other.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := other.Read(make([]byte, 1)); !isTimeout(err) {
		t.Errorf("a connection from another address was closed by a flood: %v", err)
	}
	// And the real peer still gets in.
	c, err := Dial(ctx, addr, cli, srv.Pin())
	if err != nil {
		t.Fatalf("the real peer's Dial: %v", err)
	}
	c.Close()
	if r := <-res; r.err != nil {
		t.Fatalf("Accept = %v", r.err)
	} else {
		r.c.Close()
	}
}
