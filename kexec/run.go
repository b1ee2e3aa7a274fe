package kexec

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/remote"
)

// EndCommand is the hidden nbship command that runs End on the host.
const EndCommand = "kexec-end"

// ExitRefused is the end's exit status for a *RefusedError (EX_DATAERR,
// as the other ends' refusals).
const ExitRefused = 65

// Options are how Run carries out a plan.
type Options struct {
	// Send writes the file name of the generation to w, from the PXE
	// host, when the host cannot fetch it from its URL; nil: the host
	// must fetch the files itself.
	Send func(ctx context.Context, name string, w io.Writer) error
	// Timeout bounds the wait for the host to answer SSH again after
	// the kexec; 0 = 10 minutes.
	Timeout time.Duration
	// Log gets one-line notes (the end's progress); nil = discard.
	Log io.Writer
}

// Result is what Run did.
type Result struct {
	Host       string  `json:"host"`
	Instance   string  `json:"instance"`
	Generation string  `json:"generation"`
	Fetched    string  `json:"fetched"`        // "url" or "controller"
	How        string  `json:"how"`            // "kexec -e" or "systemctl kexec"
	Answered   bool    `json:"answered"`       // the host answers SSH again
	Banner     string  `json:"banner"`         // its SSH banner, when it does
	HostKey    string  `json:"host_key"`       // SHA256:… of the key it offers now, when read
	Seconds    float64 `json:"seconds"`        // from the kexec to the answer (or the timeout)
	Addr       string  `json:"addr,omitempty"` // where it was watched
}

// HostError is the end's own failure, as it said it: Msg is its last
// "nbship: " line, Status its exit status (ExitRefused for a refusal).
type HostError struct {
	Host   string
	Msg    string
	Status int
}

func (e *HostError) Error() string { return e.Host + ": " + e.Msg }

// Refused reports whether the host refused the image before loading it.
func (e *HostError) Refused() bool { return e.Status == ExitRefused }

// NoAnswerError is a host that did not answer SSH again within the timeout.
type NoAnswerError struct {
	Host    string
	Addr    string
	Timeout time.Duration
	Down    bool // it stopped answering at some point (the kexec started)
}

func (e *NoAnswerError) Error() string {
	if !e.Down {
		return fmt.Sprintf("kexec: %s (%s) went on answering SSH as before for %v after the kexec was started; did the old system keep running? look at its console", e.Host, e.Addr, e.Timeout)
	}
	return fmt.Sprintf("kexec: %s (%s) did not answer SSH again within %v of the kexec; look at its console (the image may not start sshd, or boots slowly: raise --timeout)", e.Host, e.Addr, e.Timeout)
}

// Run boots plan on host c (dialled, host key checked) with the nbship at
// bin there: it starts the end, feeds it the plan (and the files, when it
// asks for them and o.Send is set), and once the new kernel runs, waits
// until the host answers SSH again at the address c reached, or
// o.Timeout. A refusal is a *HostError whose Refused is true; no answer
// in time is a *NoAnswerError (with the Result filled as far as it got).
//
// The host's new system has host keys of its own: Run does not trust
// them. It reads the SSH banner, and the key's fingerprint through a
// handshake that it abandons before authentication.
func Run(ctx context.Context, c *remote.Client, bin string, plan Plan, o Options) (Result, error) {
	res := Result{Host: c.Name(), Instance: plan.Instance, Generation: plan.Generation, Fetched: "url"}
	if err := plan.Check(); err != nil {
		return res, err
	}
	if o.Send == nil {
		plan.NoStdin = true
	}
	if plan.NoStdin && plan.Kernel.URL == "" {
		return res, errors.New("kexec: no URL for the files and no way to send them")
	}
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	addr := c.Addr().String()
	res.Addr = addr

	line, err := json.Marshal(plan)
	if err != nil {
		return res, fmt.Errorf("kexec: %w", err)
	}
	// The key the host offers now, to tell its next system by.
	oldKey, _ := HostKey(ctx, addr)

	stderr := &lastLines{w: log, host: c.Name()}
	p, err := c.Start(ctx, remote.Cmd{Args: []string{bin, EndCommand}, Pipes: true, Stderr: stderr})
	if err != nil {
		return res, err
	}
	defer p.Close()
	if _, err := p.Stdin.Write(append(line, '\n')); err != nil {
		return res, endError(c.Name(), p.Wait(), stderr)
	}

	var (
		execAt  time.Time
		sendErr error
		sendWG  sync.WaitGroup
	)
	sc := bufio.NewScanner(p.Stdout)
	sc.Buffer(make([]byte, 4096), 64<<10)
	for execAt.IsZero() && sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue
		}
		switch ev.Event {
		case "send":
			if o.Send == nil {
				break
			}
			res.Fetched = "controller"
			if ev.Msg != "" {
				fmt.Fprintf(log, "nbship: %s: %s; sending the files through this machine\n", c.Name(), strings.TrimPrefix(ev.Msg, "kexec: "))
			} else {
				fmt.Fprintf(log, "nbship: %s: sending the files through this machine\n", c.Name())
			}
			sendWG.Add(1)
			go func() {
				defer sendWG.Done()
				for _, name := range ev.Files {
					if err := o.Send(ctx, name, p.Stdin); err != nil {
						sendErr = fmt.Errorf("kexec: sending %s to %s: %w", name, c.Name(), err)
						p.Close()
						return
					}
				}
			}()
		case "loaded":
			stderr.flush()
			fmt.Fprintf(log, "nbship: %s: loaded %s %s\n", c.Name(), plan.Instance, plan.Generation)
		case "exec":
			stderr.flush()
			res.How = ev.How
			execAt = time.Now()
			fmt.Fprintf(log, "nbship: %s: %s: starting %s %s; waiting up to %v for it to answer SSH\n", c.Name(), ev.How, plan.Instance, plan.Generation, timeout)
		}
	}
	if execAt.IsZero() {
		werr := p.Wait()
		sendWG.Wait()
		if sendErr != nil {
			return res, sendErr
		}
		if werr == nil {
			return res, fmt.Errorf("kexec: %s: nbship %s ended without starting the kernel", c.Name(), EndCommand)
		}
		return res, endError(c.Name(), werr, stderr)
	}
	// The session ends with the old system: when the connection is
	// found dead (keepalives), or (systemctl kexec) with a clean exit,
	// often after the new system answers. Only a failed kexec ends it
	// with an error status.
	ended := make(chan error, 1)
	go func() {
		io.Copy(io.Discard, p.Stdout)
		ended <- p.Wait()
	}()
	return waitSSH(ctx, res, addr, oldKey, execAt, timeout, func() error {
		select {
		case werr := <-ended:
			var ee *remote.ExitError
			if errors.As(werr, &ee) {
				return endError(c.Name(), werr, stderr)
			}
			ended <- werr
		default:
		}
		return nil
	})
}

// endError turns the end's failure into a *HostError naming its own
// last line, or the session's error.
func endError(host string, err error, l *lastLines) error {
	var ee *remote.ExitError
	if errors.As(err, &ee) {
		if msg := l.last(); msg != "" {
			return &HostError{Host: host, Msg: msg, Status: ee.Status}
		}
	}
	l.flush()
	return err
}

// waitSSH waits until addr answers SSH as a new system: after it stopped
// answering (the old system went), or with a host key other than oldKey.
// It probes every half second; failed (a non-nil error from it) says the
// kexec failed on the host.
func waitSSH(ctx context.Context, res Result, addr, oldKey string, since time.Time, timeout time.Duration, failed func() error) (Result, error) {
	deadline := since.Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	down := false
	var bannerSince time.Time // when the new system first sent a banner
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := failed(); err != nil {
			return res, err
		}
		banner, err := Banner(ctx, addr)
		if err != nil {
			if ctx.Err() == nil && time.Now().Before(deadline) { // not the wait's own end
				down, bannerSince = true, time.Time{}
			}
		} else {
			key, kerr := HostKey(ctx, addr)
			if kerr != nil {
				key = ""
			}
			if down && bannerSince.IsZero() {
				bannerSince = time.Now()
			}
			// A new system may take a while to finish its first
			// handshake (sshd waiting for the kernel's randomness);
			// without a key after 30 s of banners, it answers anyway.
			newKey := key != "" && oldKey != "" && key != oldKey
			if newKey || down && (key != "" || time.Since(bannerSince) > 30*time.Second) {
				res.Answered, res.Banner, res.HostKey = true, banner, key
				res.Seconds = roundSeconds(time.Since(since))
				return res, nil
			}
		}
		select {
		case <-ctx.Done():
			res.Seconds = roundSeconds(time.Since(since))
			if time.Now().Before(deadline) {
				return res, fmt.Errorf("kexec: waiting for %s to answer SSH: %w", res.Host, context.Cause(ctx))
			}
			return res, &NoAnswerError{Host: res.Host, Addr: addr, Timeout: timeout, Down: down}
		case <-tick.C:
		}
	}
}

func roundSeconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }

// Banner connects to addr and reads its SSH identification line
// ("SSH-2.0-…", RFC 4253 4.2); lines before it are skipped, as the RFC
// allows. Anything else (refused, closed, no banner in 3 s) is an error.
func Banner(ctx context.Context, addr string) (string, error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := readBanner(conn)
	if err != nil {
		return "", fmt.Errorf("no SSH banner from %s: %w", addr, err)
	}
	return b, nil
}

// readBanner reads lines until the SSH 2 identification line, which it
// returns without its line end; at most 8 KiB are read.
func readBanner(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, 8192), 256)
	for {
		line, err := br.ReadString('\n')
		if strings.HasPrefix(line, "SSH-") {
			line = strings.TrimRight(line, "\r\n")
			if !strings.HasPrefix(line, "SSH-2.0-") && !strings.HasPrefix(line, "SSH-1.99-") {
				return "", fmt.Errorf("%.60q is not SSH 2", line)
			}
			if err != nil && err != io.EOF {
				return "", err
			}
			if err == io.EOF {
				return "", errors.New("the banner line did not end")
			}
			return line, nil
		}
		if err != nil {
			return "", err
		}
	}
}

// errKeySeen ends a handshake once the host key is known.
var errKeySeen = errors.New("host key read")

// HostKey returns the SHA-256 fingerprint of the host key addr offers. It
// trusts nothing: the handshake is abandoned in the host key check,
// before any authentication.
func HostKey(ctx context.Context, addr string) (string, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var fp string
	_, _, _, err = ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User: "nbship",
		// OpenSSH's order: the key ssh and ssh-keyscan see first. (A
		// dropbear -R makes the key of the type asked for first.)
		HostKeyAlgorithms: []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			fp = ssh.FingerprintSHA256(key)
			return errKeySeen
		},
	})
	if fp == "" {
		return "", fmt.Errorf("reading the host key of %s: %w", addr, err)
	}
	return fp, nil
}

// lastLines passes the end's stderr on, its "nbship: " notes as
// "nbship: HOST: ", but holds its latest note back: when the end fails,
// that is its error.
type lastLines struct {
	w       io.Writer
	host    string
	mu      sync.Mutex
	partial []byte
	held    string
}

func (l *lastLines) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		line := string(l.partial[:i])
		l.partial = l.partial[i+1:]
		l.flushLocked()
		if msg, ok := strings.CutPrefix(line, "nbship: "); ok {
			l.held = msg
		} else {
			fmt.Fprintf(l.w, "%s: %s\n", l.host, line)
		}
	}
	return len(b), nil
}

func (l *lastLines) flushLocked() {
	if l.held != "" {
		fmt.Fprintf(l.w, "nbship: %s: %s\n", l.host, l.held)
		l.held = ""
	}
}

// flush prints the held note.
func (l *lastLines) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

// last returns the held note and forgets it.
func (l *lastLines) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	msg := l.held
	l.held = ""
	return msg
}
