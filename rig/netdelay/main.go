// Command netdelay is the rig's long link (rig.sh delay): it owns one TUN
// device in the rig's router namespace, reads every IPv4 packet the router
// forwards into it, and writes the packet back after the link's one-way
// delay, at no more than the link's rate. The router's policy routes send
// what comes back out of the TUN to its destination host, so each packet
// crosses the delay once per direction and TCP's own handshakes, data and
// ACKs all see the round-trip time (2 × -delay).
//
// Each destination address is a lane of its own (on the rig, one direction
// of one link): a FIFO with the time each packet finishes crossing the
// link at -rate (a token bucket one packet deep) plus the delay. Packets
// that would wait behind more than -queue bytes still to be sent are
// dropped, as a router's tail-drop queue would; those already "on the wire"
// (sent, not yet delivered) do not count against it.
//
// It is test infrastructure, not part of nbship.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type packet struct {
	data    []byte
	release time.Time
}

type lane struct {
	name    string
	ch      chan packet
	free    time.Time // when the link finishes sending what it has (reader only)
	packets atomic.Int64
	bytes   atomic.Int64
	drops   atomic.Int64
}

type link struct {
	fd    int
	delay time.Duration
	rate  int64 // bits per second; 0: no limit
	queue int64 // bytes waiting to be sent before tail drop

	mu    sync.Mutex
	lanes []*lane
}

func main() {
	dev := flag.String("dev", "nbsdelay", "name of the TUN device to create")
	delay := flag.Duration("delay", 0, "one-way delay (the round-trip time is twice this)")
	rate := flag.Int64("rate", 0, "link rate in bits per second (0: no limit)")
	queue := flag.Int64("queue", 0, "bytes queued for sending before tail drop (0: rate × RTT + 64 KiB)")
	flag.Parse()
	if *delay < 0 || *rate < 0 || *queue < 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "netdelay: usage: netdelay -dev NAME -delay DURATION -rate BITS/S [-queue BYTES]")
		os.Exit(2)
	}
	q := *queue
	if q == 0 {
		q = int64(float64(*rate)/8*(2*delay.Seconds())) + 64<<10
	}
	fd, err := openTUN(*dev)
	if err != nil {
		fmt.Fprintf(os.Stderr, "netdelay: %v\n", err)
		os.Exit(1)
	}
	l := &link{fd: fd, delay: *delay, rate: *rate, queue: q}
	fmt.Fprintf(os.Stderr, "netdelay: %s: one-way delay %v, rate %d bit/s, queue %d bytes\n", *dev, *delay, *rate, q)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		l.report()
		os.Exit(0)
	}()
	if err := l.read(); err != nil {
		fmt.Fprintf(os.Stderr, "netdelay: %v\n", err)
		l.report()
		os.Exit(1)
	}
}

// openTUN creates the TUN device name (no packet information header: each
// read is one IP packet).
func openTUN(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tun %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tun %q: TUNSETIFF: %w", name, err)
	}
	return fd, nil
}

// read takes packets off the TUN and queues each on its destination's lane.
func (l *link) read() error {
	lanes := map[[4]byte]*lane{}
	buf := make([]byte, 1<<16)
	for {
		n, err := unix.Read(l.fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read tun: %w", err)
		}
		now := time.Now()
		var dst [4]byte
		if n >= 20 && buf[0]>>4 == 4 {
			copy(dst[:], buf[16:20])
		} // anything else (IPv6 the rig does not route) shares lane 0.0.0.0
		ln := lanes[dst]
		if ln == nil {
			ln = &lane{name: fmt.Sprintf("%d.%d.%d.%d", dst[0], dst[1], dst[2], dst[3]), ch: make(chan packet, 1<<15)}
			lanes[dst] = ln
			l.mu.Lock()
			l.lanes = append(l.lanes, ln)
			l.mu.Unlock()
			go l.write(ln)
		}
		if ln.free.Before(now) {
			ln.free = now
		}
		if l.rate > 0 {
			waiting := int64(ln.free.Sub(now).Seconds() * float64(l.rate) / 8)
			if waiting+int64(n) > l.queue {
				ln.drops.Add(1)
				continue
			}
			ln.free = ln.free.Add(time.Duration(int64(n) * 8 * int64(time.Second) / l.rate))
		}
		p := packet{data: append([]byte(nil), buf[:n]...), release: ln.free.Add(l.delay)}
		select {
		case ln.ch <- p:
		default:
			ln.drops.Add(1)
		}
	}
}

// write delivers one lane's packets back into the TUN, each at its time.
func (l *link) write(ln *lane) {
	for p := range ln.ch {
		if d := time.Until(p.release); d > 0 {
			time.Sleep(d)
		}
		if _, err := unix.Write(l.fd, p.data); err != nil {
			ln.drops.Add(1)
			continue
		}
		ln.packets.Add(1)
		ln.bytes.Add(int64(len(p.data)))
	}
}

func (l *link) report() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ln := range l.lanes {
		fmt.Fprintf(os.Stderr, "netdelay: to %s: %d packets, %d bytes delivered, %d dropped\n",
			ln.name, ln.packets.Load(), ln.bytes.Load(), ln.drops.Load())
	}
}
