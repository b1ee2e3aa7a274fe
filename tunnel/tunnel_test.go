package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func ident(t testing.TB) *Identity {
	t.Helper()
	id, err := NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestParsePin(t *testing.T) {
	id := ident(t)
	for _, tc := range []struct {
		in, want, err string
	}{
		{id.Pin(), id.Pin(), ""},
		{"  " + id.Pin() + "\n", id.Pin(), ""},
		{id.Pin() + "=", id.Pin(), ""},
		{strings.TrimPrefix(id.Pin(), "SHA256:"), "", "does not start with SHA256:"},
		{"SHA256:abc", "", "43 base64 characters"},
		{"SHA256:" + strings.Repeat("A", 44), "", "43 base64 characters"},
		{"MD5:" + id.Pin()[7:], "", "does not start"},
		{"", "", "does not start"},
	} {
		got, err := ParsePin(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePin(%q) = %q, %v, want error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePin(%q) = %q, %v, want %q", tc.in, got, err, tc.want)
		}
	}
	if a, b := ident(t).Pin(), ident(t).Pin(); a == b {
		t.Errorf("two identities share the pin %s", a)
	}
}

func FuzzParsePin(f *testing.F) {
	f.Add("SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")
	f.Add("SHA256:====")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePin(s)
		if err != nil {
			return
		}
		if q, err := ParsePin(p); err != nil || q != p {
			t.Fatalf("ParsePin(%q) = %q is not canonical: %q, %v", s, p, q, err)
		}
	})
}

// serve accepts on a loopback listener with Accept and echoes one message.
func serve(t *testing.T, srv *Identity, clientPin string, refused func(error)) (addr string, result chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	result = make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := Accept(ctx, ln, srv, clientPin, refused)
		if err != nil {
			result <- err
			return
		}
		defer c.Close()
		c.Write([]byte("ready"))
		buf := make([]byte, 5)
		_, err = io.ReadFull(c, buf)
		result <- err
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), result
}

func dialAndTalk(addr string, id *Identity, serverPin string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, id, serverPin)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return ReadError(err, id)
	}
	_, err = c.Write([]byte("hello"))
	if c.ConnectionState().Version != tls.VersionTLS13 {
		return errors.New("not TLS 1.3")
	}
	return err
}

func TestPinnedChannel(t *testing.T) {
	srv, cli := ident(t), ident(t)
	addr, res := serve(t, srv, cli.Pin(), func(err error) { t.Errorf("refused the right client: %v", err) })
	if err := dialAndTalk(addr, cli, srv.Pin()); err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := <-res; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestClientRefusesWrongServer(t *testing.T) {
	srv, cli, other := ident(t), ident(t), ident(t)
	var refusals []error
	addr, _ := serve(t, srv, cli.Pin(), func(err error) { refusals = append(refusals, err) })
	err := dialAndTalk(addr, cli, other.Pin())
	var pe *PinError
	if !errors.As(err, &pe) {
		t.Fatalf("Dial with the wrong server pin = %v, want *PinError", err)
	}
	if pe.Want != other.Pin() || pe.Got != srv.Pin() {
		t.Errorf("PinError = want %s got %s, want want %s got %s", pe.Want, pe.Got, other.Pin(), srv.Pin())
	}
	msg := err.Error()
	if !strings.Contains(msg, "fingerprint mismatch") || !strings.Contains(msg, srv.Pin()) || !strings.Contains(msg, other.Pin()) {
		t.Errorf("error %q does not say fingerprint mismatch with both pins", msg)
	}
}

func TestServerRefusesWrongClientAndKeepsWaiting(t *testing.T) {
	srv, cli, intruder := ident(t), ident(t), ident(t)
	refused := make(chan error, 4)
	addr, res := serve(t, srv, cli.Pin(), func(err error) { refused <- err })

	// A third party with its own certificate (who even knows the server's
	// pin) connects first: the server refuses it...
	err := dialAndTalk(addr, intruder, srv.Pin())
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "fingerprint mismatch") {
		t.Fatalf("intruder's view = %v, want *RefusedError", err)
	}
	select {
	case r := <-refused:
		var pe *PinError
		if !errors.As(r, &pe) || pe.Got != intruder.Pin() || pe.Want != cli.Pin() {
			t.Errorf("server's refusal = %v, want PinError naming both pins", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server reported no refusal")
	}
	// ...and a plain-text client too...
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		io.Copy(io.Discard, c)
		c.Close()
	}
	// ...and the real client still gets through.
	if err := dialAndTalk(addr, cli, srv.Pin()); err != nil {
		t.Fatalf("real client after intruders: %v", err)
	}
	if err := <-res; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestOlderTLSRefused(t *testing.T) {
	srv, cli := ident(t), ident(t)
	addr, _ := serve(t, srv, cli.Pin(), nil)
	c, err := tls.Dial("tcp", addr, &tls.Config{
		InsecureSkipVerify: true,
		MaxVersion:         tls.VersionTLS12,
		Certificates:       []tls.Certificate{cli.cert},
	})
	if err == nil {
		c.Close()
		t.Fatal("a TLS 1.2 client completed a handshake")
	}
}

func TestDialWaitsForLateListener(t *testing.T) {
	// Reserve a port, close it, and listen on it a moment later.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv, cli := ident(t), ident(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		defer ln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if c, err := Accept(ctx, ln, srv, cli.Pin(), nil); err == nil {
			c.Write([]byte("ready"))
			io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, addr, cli, srv.Pin())
	if err != nil {
		t.Fatalf("Dial to a late listener: %v", err)
	}
	c.Close()
}

func BenchmarkTLSThroughput(b *testing.B) {
	srv, cli := ident(b), ident(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := Accept(context.Background(), ln, srv, cli.Pin(), nil)
		if err != nil {
			return
		}
		io.Copy(io.Discard, c)
		c.Close()
	}()
	c, err := Dial(context.Background(), ln.Addr().String(), cli, srv.Pin())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := bytes.Repeat([]byte{0xa5}, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// A link that goes down mid-stream must fail the socket in seconds, not
// the kernel's ~15 minutes: both ends carry TCP_USER_TIMEOUT and keepalives.
func TestDeadLinkTimeoutsAreSet(t *testing.T) {
	srv, cli := ident(t), ident(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *Conn, 1)
	go func() {
		c, _ := Accept(context.Background(), ln, srv, cli.Pin(), nil)
		accepted <- c
		if c != nil {
			c.Write([]byte("ready"))
		}
	}()
	c, err := Dial(context.Background(), ln.Addr().String(), cli, srv.Pin())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	defer s.Close()
	for name, conn := range map[string]*Conn{"dialled": c, "accepted": s} {
		tc, ok := conn.Meter.Conn.(*net.TCPConn)
		if !ok {
			t.Fatalf("%s: not a TCP connection", name)
		}
		rc, _ := tc.SyscallConn()
		var ut, ka int
		rc.Control(func(fd uintptr) {
			ut, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			ka, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		})
		if ut != int(UserTimeout/time.Millisecond) || ka != 1 {
			t.Errorf("%s: TCP_USER_TIMEOUT = %d ms, SO_KEEPALIVE = %d; want %d ms and 1", name, ut, ka, UserTimeout/time.Millisecond)
		}
	}
}

// pair returns both ends of a pinned channel on loopback.
func pair(t *testing.T) (client, server *Conn) {
	t.Helper()
	srv, cli := ident(t), ident(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan *Conn, 1)
	go func() {
		c, _ := Accept(context.Background(), ln, srv, cli.Pin(), nil)
		ch <- c
	}()
	c, err := Dial(context.Background(), ln.Addr().String(), cli, srv.Pin())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func TestWatchClosesAnIdleChannel(t *testing.T) {
	c, s := pair(t)
	idle := make(chan struct{})
	stop := s.Watch(200*time.Millisecond, func() { close(idle) })
	defer stop()
	go c.Write([]byte("x")) // completes the client's side of the handshake
	start := time.Now()
	buf := make([]byte, 8)
	var err error
	for err == nil {
		_, err = s.Read(buf)
	}
	select {
	case <-idle:
	case <-time.After(5 * time.Second):
		t.Fatal("onIdle not called")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("idle channel closed after %v, want about 200ms", d)
	}
}

func TestWatchLeavesABusyChannel(t *testing.T) {
	c, s := pair(t)
	stop := s.Watch(300*time.Millisecond, func() { t.Error("a busy channel was closed as idle") })
	go func() {
		for range 20 {
			if _, err := c.Write([]byte("tick")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	buf := make([]byte, 4)
	for range 20 {
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatalf("read during steady traffic: %v", err)
		}
	}
	stop()
}

func TestListenWaitsForABusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	go func() {
		time.Sleep(300 * time.Millisecond)
		busy.Close()
	}()
	waited := 0
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ln, err := Listen(ctx, addr, func() { waited++ })
	if err != nil {
		t.Fatalf("Listen on a port freed later: %v", err)
	}
	ln.Close()
	if waited != 1 {
		t.Errorf("waiting reported %d times, want once", waited)
	}

	// A listener of its own: the goroutine above still holds busy.
	taken, _ := net.Listen("tcp", "127.0.0.1:0")
	defer taken.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Listen(ctx, taken.Addr().String(), nil); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Listen on a port that stays taken = %v, want address already in use", err)
	}
}

// Unacked reports the send queue: it fills while the peer reads nothing
// (its window closes) and empties once the peer has read it all.
func TestUnackedFollowsTheSendQueue(t *testing.T) {
	cli, srv := pair(t)
	const total = 32 << 20
	wrote := make(chan error, 1)
	go func() {
		_, err := cli.Write(make([]byte, total))
		wrote <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, ok := cli.Unacked()
		if !ok {
			t.Fatal("Unacked not available on a TCP channel")
		}
		if n > 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer reads nothing, yet only %d bytes are queued", n)
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := io.CopyN(io.Discard, srv, total); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	for {
		n, _ := cli.Unacked()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("everything was read, yet %d bytes are still queued", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// Over a connection that is not a socket (an SSH session's stdio) nothing
// can be learnt about the link: neither its queue nor TCP_INFO.
func TestUnackedNotOverStdio(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &Conn{Meter: Meter(NewStdioConn(a, a, a))}
	if n, ok := c.Unacked(); ok {
		t.Fatalf("Unacked over stdio = %d, true; want false", n)
	}
	if info, ok := c.LinkInfo(); ok {
		t.Fatalf("LinkInfo over stdio = %+v, true; want false", info)
	}
}

// LinkInfo reads the TCP socket under the channel: what crossed it is
// acknowledged, at a rate (over stdio: TestUnackedNotOverStdio).
func TestLinkInfo(t *testing.T) {
	cli, srv := pair(t)
	const total = 1 << 20
	go io.CopyN(io.Discard, srv, total)
	if _, err := cli.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, ok := cli.LinkInfo()
		if !ok {
			t.Fatal("LinkInfo not available on a TCP channel")
		}
		if n, ok := cli.Unacked(); ok && n == 0 {
			if info, _ = cli.LinkInfo(); info.Rate <= 0 || info.MinRTT <= 0 {
				t.Fatalf("LinkInfo after all %d bytes were acknowledged = %+v; want a rate and a round trip", total, info)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer read %d bytes, yet LinkInfo says %+v", total, info)
		}
		time.Sleep(time.Millisecond)
	}
}
