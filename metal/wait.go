package metal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// SSHBanner connects to addr (host:port) and reads the SSH version line,
// as reboot.sh did to tell whether a host is up. It returns the banner
// (e.g. "SSH-2.0-OpenSSH_9.2p1") if it is an SSH 2 one, and an error if
// the connection fails or no SSH 2 banner comes within timeout.
func SSHBanner(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	return readBanner(conn)
}

// readBanner reads the SSH version line. RFC 4253 4.2: the server may send
// other lines before it, each at most 255 bytes; a bounded number of them
// is read.
func readBanner(rd io.Reader) (string, error) {
	r := bufio.NewReaderSize(rd, 256)
	for range 32 {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return "", errors.New("line longer than 255 bytes before the SSH banner")
			}
			return "", fmt.Errorf("no SSH banner: %w", err)
		}
		s := strings.TrimRight(string(line), "\r\n")
		if strings.HasPrefix(s, "SSH-") && strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			// RFC 4253: the identification string ends at its CR LF and
			// holds no other control characters.
			return "", fmt.Errorf("malformed SSH banner %q", s)
		}
		if strings.HasPrefix(s, "SSH-2.0-") || strings.HasPrefix(s, "SSH-1.99-") {
			return s, nil
		}
		if strings.HasPrefix(s, "SSH-") {
			return "", fmt.Errorf("banner %q is not SSH 2", s)
		}
	}
	return "", errors.New("no SSH banner in the first 32 lines")
}

// WaitOptions pace WaitReboot.
type WaitOptions struct {
	Interval     time.Duration                    // between probes; 2s if 0
	ProbeTimeout time.Duration                    // per probe; 5s if 0
	Note         func(format string, args ...any) // progress, may be nil
}

// WaitReboot waits until SSH on addr goes down (the connection fails or
// no banner comes) and then comes back (a banner is read again). ctx bounds
// the whole wait. It returns the banner read at the end.
func WaitReboot(ctx context.Context, addr string, o WaitOptions) (string, error) {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 5 * time.Second
	}
	note := o.Note
	if note == nil {
		note = func(string, ...any) {}
	}
	start := time.Now()
	note("waiting for SSH on %s to go down", addr)
	for {
		_, err := SSHBanner(ctx, addr, o.ProbeTimeout)
		if err != nil && !expired(ctx) {
			note("%s is down (%v); waiting for it to come back", addr, err)
			break
		}
		if err := pause(ctx, o.Interval); err != nil {
			return "", waitError(err, fmt.Sprintf("SSH on %s still answers after %s; did the reboot happen?", addr, since(start)))
		}
	}
	for {
		banner, err := SSHBanner(ctx, addr, o.ProbeTimeout)
		if err == nil {
			note("%s is up again after %s (%s)", addr, since(start), banner)
			return banner, nil
		}
		if err := pause(ctx, o.Interval); err != nil {
			return "", waitError(err, fmt.Sprintf("%s went down but SSH did not come back within %s", addr, since(start)))
		}
	}
}

// expired reports whether ctx is done or its deadline has passed: a probe
// that failed then may have failed for want of time, not because the host
// is down.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

func pause(ctx context.Context, d time.Duration) error {
	if err := sleepCtx(ctx, d); err != nil {
		return err
	}
	return ctx.Err()
}

func waitError(err error, timeoutMsg string) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return errors.New("wait: " + timeoutMsg)
	}
	return fmt.Errorf("wait: %w", err)
}

func since(t time.Time) time.Duration {
	d := time.Since(t)
	if d < 10*time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Second)
}
