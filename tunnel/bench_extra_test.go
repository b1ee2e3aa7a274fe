package tunnel

import (
	"context"
	"net"
	"testing"
)

// BenchmarkHandshake is the channel's fixed cost per transfer: a fresh
// identity on each end (Ed25519 key, self-signed certificate) and a pinned
// TLS 1.3 handshake over loopback TCP, until the first byte crosses.
func BenchmarkHandshake(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		srv, err := NewIdentity()
		if err != nil {
			b.Fatal(err)
		}
		cli, err := NewIdentity()
		if err != nil {
			b.Fatal(err)
		}
		accepted := make(chan error, 1)
		go func() {
			c, err := Accept(ctx, ln, srv, cli.Pin(), nil)
			if err == nil {
				_, err = c.Write([]byte{1})
				c.Close()
			}
			accepted <- err
		}()
		c, err := Dial(ctx, ln.Addr().String(), cli, srv.Pin())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		c.Close()
		if err := <-accepted; err != nil {
			b.Fatal(err)
		}
	}
}
