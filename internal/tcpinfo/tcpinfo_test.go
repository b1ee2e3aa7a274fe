package tcpinfo

import (
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/testbin"
)

// waitFor polls c's TCP_INFO until cond holds, for at most 5 s.
func waitFor(t *testing.T, c *net.TCPConn, what string, cond func(Info) bool) Info {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for {
		info, ok := Read(c)
		if !ok {
			t.Fatal("Read(loopback TCP) = not ok")
		}
		if cond(info) {
			return info
		}
		if time.Now().After(end) {
			t.Fatalf("%s: never; last reading %+v", what, info)
		}
		time.Sleep(time.Millisecond)
	}
}

// A sender that writes less than the link takes reads as app-limited,
// with a rate and a round trip; one held back by a receiver that reads
// slowly, as not app-limited. (The kernel keeps a sample that was not
// app-limited until a later one is not either, or is faster: small writes
// flag the rate only while nothing faster was seen.)
func TestReadLoopback(t *testing.T) {
	c, s := testbin.TCPPair(t)
	go io.Copy(io.Discard, io.LimitReader(s, 3*100))
	for range 3 {
		if _, err := c.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	info := waitFor(t, c, "a delivery-rate sample of the small writes", func(i Info) bool { return i.Rate > 0 })
	if !info.AppLimited || info.MinRTT <= 0 {
		t.Errorf("after small writes into an idle connection: %+v; want app-limited, a rate, a round trip", info)
	}

	// Now the receiver takes 64 KiB every 2 ms (32 MB/s at most) while
	// the sender keeps its buffer full.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if _, err := io.ReadFull(s, buf); err != nil {
				return
			}
		}
	}()
	go func() {
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	waitFor(t, c, "a sample held back by the receiver", func(i Info) bool { return !i.AppLimited && i.Rate > 0 })
}

// A socket that is not TCP has no TCP_INFO.
func TestReadNotTCP(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if info, ok := Read(c.(*net.UnixConn)); ok {
		t.Errorf("Read(unix socket) = %+v, ok; want not ok", info)
	}
}
