// Package tcpinfo reads what the kernel knows about a TCP connection's
// link (getsockopt TCP_INFO): the rate its acknowledgements arrive at,
// and whether the sender or the link held that rate down.
package tcpinfo

import (
	"encoding/binary"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Info is one reading of a connection's TCP_INFO.
type Info struct {
	// Rate is the kernel's latest delivery-rate sample in bytes per
	// second: bytes acknowledged over an interval of at least the
	// smallest round trip (0 before the first).
	Rate float64
	// AppLimited: while the bytes of that sample were sent, the sender
	// had less to send than the window allowed; the link can carry at
	// least Rate, maybe much more. Not set: the window or the link held
	// the sample down.
	AppLimited bool
	// MinRTT is the smallest round trip seen.
	MinRTT time.Duration
}

// Read reads c's TCP_INFO; ok is false when c is not a TCP socket or the
// kernel has no delivery rate (before Linux 4.9).
func Read(c syscall.Conn) (info Info, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Info{}, false
	}
	var ti *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) { ti, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || serr != nil {
		return Info{}, false
	}
	if ti.Min_rtt == 0 && ti.Delivery_rate == 0 && ti.Bytes_acked == 0 {
		// An old kernel's shorter struct (or a socket that never
		// carried a byte): nothing to go by.
		return Info{}, false
	}
	return Info{
		Rate:       float64(ti.Delivery_rate),
		AppLimited: appLimited(ti),
		MinRTT:     time.Duration(ti.Min_rtt) * time.Microsecond,
	}, true
}

// appLimited reads tcpi_delivery_rate_app_limited, the first bit of the
// struct's eighth byte, which unix.TCPInfo leaves out (it is padding
// there, but the kernel fills it in place).
func appLimited(ti *unix.TCPInfo) bool {
	b := (*[8]byte)(unsafe.Pointer(ti))[7]
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return b&1 != 0 // little-endian: bit fields from the low bit
	}
	return b&0x80 != 0
}
