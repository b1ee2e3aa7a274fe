// Package tunnel is nbship's data channel: TLS 1.3 between two ends that
// each hold an ephemeral, in-memory key and self-signed certificate, and
// that accept exactly one peer certificate, named by its SHA-256 pin.
//
// The pins travel over the controller's SSH sessions (stdin, never argv or
// disk), so no CA, no file and no shared secret is involved: a peer with any
// other certificate fails the handshake on whichever side checks it.
package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nbship/nbship/internal/tcpinfo"
)

// PinPrefix starts every pin, as in OpenSSH's key fingerprints.
const PinPrefix = "SHA256:"

// Identity is an ephemeral key pair and its self-signed certificate. It
// lives only in memory.
type Identity struct {
	cert tls.Certificate
	pin  string
}

// NewIdentity makes a fresh Ed25519 key and a self-signed certificate valid
// for one day around now.
func NewIdentity() (*Identity, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tunnel: generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("tunnel: generating serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "nbship ephemeral"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"nbship"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("tunnel: creating certificate: %w", err)
	}
	return &Identity{
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv},
		pin:  Fingerprint(der),
	}, nil
}

// Pin is this identity's certificate fingerprint, "SHA256:<base64>".
func (id *Identity) Pin() string { return id.pin }

// Fingerprint returns the pin of a DER certificate: SHA256: followed by the
// unpadded standard base64 of its SHA-256, as OpenSSH prints key hashes.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return PinPrefix + base64.RawStdEncoding.EncodeToString(sum[:])
}

// ParsePin checks that s is a pin and returns it in canonical form (padding
// is accepted and dropped).
func ParsePin(s string) (string, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, PinPrefix)
	if !ok {
		return "", fmt.Errorf("tunnel: pin %q does not start with %s", truncate(s), PinPrefix)
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(rest, "="))
	if err != nil || len(raw) != sha256.Size {
		return "", fmt.Errorf("tunnel: pin %q is not SHA256: and 43 base64 characters", truncate(s))
	}
	return PinPrefix + base64.RawStdEncoding.EncodeToString(raw), nil
}

func truncate(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// PinError is a peer that presented a certificate other than the pinned one.
type PinError struct {
	Want string // the pin we were told to expect
	Got  string // the pin of the certificate the peer presented ("" if none)
}

func (e *PinError) Error() string {
	got := e.Got
	if got == "" {
		got = "no certificate"
	}
	return fmt.Sprintf("tunnel: fingerprint mismatch: expected peer %s, peer presented %s", e.Want, got)
}

// RefusedError is our certificate being refused by the peer: the peer was
// told another pin than ours.
type RefusedError struct {
	Ours string
	Err  error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("tunnel: the peer refused our certificate %s (fingerprint mismatch on its side: it expects another pin): %v", e.Ours, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

func (id *Identity) config(peerPin string) *tls.Config {
	verify := func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return &PinError{Want: peerPin}
		}
		if got := Fingerprint(cs.PeerCertificates[0].Raw); got != peerPin {
			return &PinError{Want: peerPin, Got: got}
		}
		return nil
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		// The chain is not checked against any CA: the pin, checked in
		// VerifyConnection (which also runs on resumption), is the trust.
		InsecureSkipVerify:     true,
		ClientAuth:             tls.RequireAnyClientCert,
		VerifyConnection:       verify,
		SessionTicketsDisabled: true,
		ServerName:             "nbship",
	}
}

// Server wraps conn as the TLS server end, accepting only peerPin.
func Server(conn net.Conn, id *Identity, peerPin string) *tls.Conn {
	return tls.Server(conn, id.config(peerPin))
}

// Client wraps conn as the TLS client end, accepting only peerPin.
func Client(conn net.Conn, id *Identity, peerPin string) *tls.Conn {
	return tls.Client(conn, id.config(peerPin))
}

// Handshake runs the TLS handshake under ctx and turns a pin failure into a
// *PinError (ours) or *RefusedError (the peer's).
func Handshake(ctx context.Context, c *tls.Conn, id *Identity) error {
	err := c.HandshakeContext(ctx)
	if err == nil {
		return nil
	}
	return classify(err, id)
}

// classify maps TLS errors to pin errors where they are about pins.
func classify(err error, id *Identity) error {
	var pe *PinError
	if errors.As(err, &pe) {
		return pe
	}
	var alert tls.AlertError
	if errors.As(err, &alert) && (alert == 42 || alert == 43 || alert == 46 || alert == 48 || alert == 116) {
		// bad_certificate, unsupported_certificate, certificate_unknown,
		// unknown_ca, certificate_required: the peer refused ours.
		return &RefusedError{Ours: id.Pin(), Err: err}
	}
	if strings.Contains(err.Error(), "remote error: tls: bad certificate") {
		return &RefusedError{Ours: id.Pin(), Err: err}
	}
	return fmt.Errorf("tunnel: TLS handshake: %w", err)
}

// ReadError classifies an error from the first read after a client
// handshake: in TLS 1.3 a client learns that the server refused its
// certificate only then.
func ReadError(err error, id *Identity) error {
	if err == nil {
		return nil
	}
	var alert tls.AlertError
	if errors.As(err, &alert) || strings.Contains(err.Error(), "remote error: tls:") {
		return classify(err, id)
	}
	return err
}

// A dead link must end a transfer, not hang it: TCP keepalives find a
// silent peer, and TCP_USER_TIMEOUT bounds how long sent data may stay
// unacknowledged (a link that went down mid-stream) before the socket
// fails. Both are far below the kernel defaults of hours and ~15 minutes.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3}

// UserTimeout is how long written data may stay unacknowledged.
const UserTimeout = 20 * time.Second

func setUserTimeout(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(UserTimeout/time.Millisecond))
	})
	if err != nil {
		return err
	}
	return serr
}

func tuneTCP(c *net.TCPConn) {
	c.SetKeepAliveConfig(keepAlive)
	if rc, err := c.SyscallConn(); err == nil {
		setUserTimeout("", "", rc)
	}
}

// Conn is an established channel and the byte counters of the connection
// under it.
type Conn struct {
	*tls.Conn
	Meter *Metered
	batch *batchConn // between the two; nil in a Conn made by hand

	// lanes, when set, is the channel's several connections (see
	// DialLanes); the fields above are then its first lane's, and every
	// method below goes through lanes.
	lanes *stripe
	hello laneHello // this connection's, as AcceptLanes read it
}

// Read reads the channel's bytes in order.
func (c *Conn) Read(p []byte) (int, error) {
	if c.lanes != nil {
		return c.lanes.read(p)
	}
	return c.Conn.Read(p)
}

// Write sends p in TLS records that reach the connection in a few large
// writes instead of one write each (see batchConn), all of them before it
// returns. Writes that bypass it (on the embedded tls.Conn) work as before,
// one write per record.
func (c *Conn) Write(p []byte) (int, error) {
	if c.lanes != nil {
		return c.lanes.writev([][]byte{p})
	}
	if c.batch == nil || !c.batch.begin() {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(p)
	if ferr := c.batch.end(); err == nil {
		err = ferr
	}
	if err != nil {
		// tls counts a record as written once it is handed on, which
		// here may be into the batch that then failed to go out: claim
		// nothing rather than bytes the peer will never see.
		return 0, err
	}
	return n, nil
}

// Writev writes the buffers one after the other as one Write does a buffer:
// their records go out together (a message's header and its payload in one
// write, not two).
func (c *Conn) Writev(bufs ...[]byte) (int, error) {
	if c.lanes != nil {
		return c.lanes.writev(bufs)
	}
	if c.batch == nil || !c.batch.begin() {
		return writeEach(c.Conn, bufs)
	}
	n, err := writeEach(c.Conn, bufs)
	if ferr := c.batch.end(); err == nil {
		err = ferr
	}
	if err != nil {
		return 0, err // as Write: nothing is claimed of a batch that failed
	}
	return n, nil
}

func writeEach(w io.Writer, bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		k, err := w.Write(b)
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Close sends close_notify and closes the connection. While a Write is in
// flight, tls.Conn.Close sends no close_notify: it only closes the
// connection under it, to break that Write (blocked, say, on a peer that
// reads no more). A Write here goes on after tls.Conn.Write returned,
// writing out its batch, where tls cannot see it; Close breaks that part
// the same way, rather than have close_notify wait behind it (up to the
// 5 s that tls allows it, or for ever over stdio, which has no deadlines).
func (c *Conn) Close() error {
	if c.lanes != nil {
		return c.lanes.close()
	}
	if c.batch != nil && c.batch.stopBatching() {
		err := c.batch.Close()
		c.Conn.Close() // marks tls closed; its close_notify fails at once
		return err
	}
	return c.Conn.Close()
}

// WireBytes is what crossed the underlying connection both ways.
func (c *Conn) WireBytes() int64 {
	if c.lanes != nil {
		return c.lanes.wireBytes()
	}
	return c.Meter.In.Load() + c.Meter.Out.Load()
}

// Unacked is how many bytes written to the channel the peer's TCP has not
// yet acknowledged (the send queue, SIOCOUTQ): what the link still has to
// carry. ok is false when the channel does not run over a TCP socket (over
// an SSH session's stdio, say), where nothing can be learnt about the link.
func (c *Conn) Unacked() (n int, ok bool) {
	if c.lanes != nil {
		return c.lanes.unacked()
	}
	sc, isSys := c.Meter.Conn.(syscall.Conn)
	if !isSys {
		return 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		return 0, false
	}
	return n, true
}

// LinkInfo is what the kernel knows about the link under the channel
// (TCP_INFO): the rate the peer's acknowledgements come at, and whether
// the sender or the link held it down. ok is false when the channel does
// not run over a TCP socket (an SSH session's stdio).
func (c *Conn) LinkInfo() (info tcpinfo.Info, ok bool) {
	if c.lanes != nil {
		return c.lanes.linkInfo()
	}
	sc, isSys := c.Meter.Conn.(syscall.Conn)
	if !isSys {
		return tcpinfo.Info{}, false
	}
	return tcpinfo.Read(sc)
}

// ClientOver and ServerOver run the handshake over an existing connection
// (such as StdioConn) and return the channel. Its writes are batched over
// either (fewer, larger writes suit an SSH session's pipe as well).
func ClientOver(ctx context.Context, conn net.Conn, id *Identity, peerPin string) (*Conn, error) {
	m := Meter(conn)
	b := newBatchConn(m)
	tc := Client(b, id, peerPin)
	if err := Handshake(ctx, tc, id); err != nil {
		return nil, err
	}
	return &Conn{Conn: tc, Meter: m, batch: b}, nil
}

// ServerOver is ClientOver for the server end.
func ServerOver(ctx context.Context, conn net.Conn, id *Identity, peerPin string) (*Conn, error) {
	m := Meter(conn)
	b := newBatchConn(m)
	tc := Server(b, id, peerPin)
	if err := Handshake(ctx, tc, id); err != nil {
		return nil, err
	}
	return &Conn{Conn: tc, Meter: m, batch: b}, nil
}

// DialError is a failure to reach the peer at all (as opposed to reaching
// it and failing the handshake).
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return fmt.Sprintf("tunnel: cannot reach %s: %v", e.Addr, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }

// Dial connects to addr and completes the client handshake. A refused
// connection is retried until ctx ends, so a listener that is a moment late
// is not an error.
func Dial(ctx context.Context, addr string, id *Identity, peerPin string) (*Conn, error) {
	d := net.Dialer{KeepAliveConfig: keepAlive, Control: setUserTimeout}
	conn, err := dialTCP(ctx, &d, addr)
	if err != nil {
		return nil, err
	}
	c, err := ClientOver(ctx, conn, id, peerPin)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Limits on connections whose handshake is still under way. Anyone who
// can reach the receiver's port can open connections and send nothing;
// handshakes run side by side, each bounded by HandshakeTimeout, and at
// most MaxPending (MaxPendingPerHost from one address) wait at once: a new
// connection past a cap closes the oldest pending one of the address with
// the most, so a flood from one address never pushes out the peer's.
var (
	HandshakeTimeout  = 10 * time.Second
	MaxPending        = 64
	MaxPendingPerHost = 8
)

// refusalsShown is how many refused connections Accept reports one by one;
// after that it reports every hundredth, so a flood cannot fill the log.
const refusalsShown = 8

// Accept accepts connections on ln until one completes a handshake with the
// pinned peer, and returns it. Handshakes run concurrently, each within
// HandshakeTimeout; each refused peer (wrong certificate, a peer that
// refused ours, garbage, silence) is reported to refused and does not end
// the wait, so third parties that connect first or at the same time cannot
// lock out the real peer. It returns when ctx ends, and only after every
// handshake it started has ended.
func Accept(ctx context.Context, ln net.Listener, id *Identity, peerPin string, refused func(error)) (*Conn, error) {
	var won *Conn
	err := acceptLoop(ctx, ln, id, peerPin, refused, nil, func(c *Conn) bool {
		won = c
		return true
	})
	if won != nil {
		return won, nil
	}
	return nil, acceptFailed(ctx, ln, peerPin, err)
}

// acceptFailed says why an accept loop ended without a peer: ctx ended
// (its cause), or the listener failed with err.
func acceptFailed(ctx context.Context, ln net.Listener, peerPin string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("tunnel: no peer with pin %s connected to %s: %w", peerPin, ln.Addr(), context.Cause(ctx))
	}
	return fmt.Errorf("tunnel: accepting on %s: %w", ln.Addr(), err)
}

// acceptLoop accepts connections on ln and runs the server handshake on
// each, side by side, each within HandshakeTimeout (then after, when set,
// under the same deadline: a peer that passes the handshake but not after
// is refused like one that fails it). Each refused connection is reported
// to refused. take gets every connection that passed, one at a time, and
// owns it; when it returns true the loop ends. The loop also ends when ctx
// does or ln fails (that error is returned), closing ln, and returns only
// after every handshake it started has ended.
func acceptLoop(ctx context.Context, ln net.Listener, id *Identity, peerPin string, refused func(error), after func(*Conn, time.Time) error, take func(*Conn) bool) error {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(actx, func() { ln.Close() })
	defer stop()
	g := newGate()
	var takeMu sync.Mutex
	var nrefused atomic.Int64
	report := func(addr net.Addr, err error) {
		if refused == nil || actx.Err() != nil {
			return
		}
		switch n := nrefused.Add(1); {
		case n <= refusalsShown:
			refused(fmt.Errorf("refused %s: %w", addr, err))
		case n%100 == 0:
			refused(fmt.Errorf("refused %d connections so far; the latest, %s: %w", n, addr, err))
		}
	}
	var wg sync.WaitGroup
	var acceptErr error
	for {
		conn, err := ln.Accept()
		if err != nil {
			acceptErr = err
			break
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tuneTCP(tc)
		}
		if victim := g.admit(conn); victim != nil {
			victim.Close()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx, hcancel := context.WithTimeout(actx, HandshakeTimeout)
			c, err := ServerOver(hctx, conn, id, peerPin)
			if err == nil && after != nil {
				deadline, _ := hctx.Deadline()
				if err = after(c, deadline); err != nil {
					c.Close()
				}
			}
			hcancel()
			if evicted := g.leave(conn); evicted && err == nil {
				c.Close()
				err = errors.New("closed to make room for other connections")
			}
			if err != nil {
				conn.Close()
				report(conn.RemoteAddr(), err)
				return
			}
			takeMu.Lock()
			defer takeMu.Unlock()
			if actx.Err() != nil {
				c.Close() // a second pinned peer after the loop ended
				return
			}
			if take(c) {
				cancel()
			}
		}()
	}
	cancel()
	g.closeAll()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return acceptErr
}

// gate tracks the connections whose handshake is under way.
type gate struct {
	mu      sync.Mutex
	seq     uint64
	pending map[net.Conn]pendingConn
	evicted map[net.Conn]bool
	perHost map[string]int
}

type pendingConn struct {
	host string
	seq  uint64 // order of arrival
}

func newGate() *gate {
	return &gate{pending: map[net.Conn]pendingConn{}, evicted: map[net.Conn]bool{}, perHost: map[string]int{}}
}

func hostOf(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}

// admit records c as pending and returns the connection to close to stay
// within the caps, or nil.
func (g *gate) admit(c net.Conn) net.Conn {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seq++
	h := hostOf(c)
	g.pending[c] = pendingConn{host: h, seq: g.seq}
	g.perHost[h]++
	var from string
	switch {
	case g.perHost[h] > MaxPendingPerHost:
		from = h
	case len(g.pending) > MaxPending:
		for host, n := range g.perHost {
			if from == "" || n > g.perHost[from] {
				from = host
			}
		}
	default:
		return nil
	}
	var victim net.Conn
	var oldest uint64
	for pc, p := range g.pending {
		if p.host == from && (victim == nil || p.seq < oldest) {
			victim, oldest = pc, p.seq
		}
	}
	g.drop(victim)
	g.evicted[victim] = true
	return victim
}

func (g *gate) drop(c net.Conn) {
	p, ok := g.pending[c]
	if !ok {
		return
	}
	delete(g.pending, c)
	if g.perHost[p.host]--; g.perHost[p.host] == 0 {
		delete(g.perHost, p.host)
	}
}

// leave ends c's handshake and says whether admit closed it meanwhile.
func (g *gate) leave(c net.Conn) (evicted bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.drop(c)
	evicted = g.evicted[c]
	delete(g.evicted, c)
	return evicted
}

// closeAll ends every pending handshake.
func (g *gate) closeAll() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.pending {
		c.Close()
	}
}
