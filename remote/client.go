package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Config says how to reach hosts. The zero value reads ~/.ssh/config and
// ~/.ssh/known_hosts under $HOME and refuses unknown host keys.
type Config struct {
	Home           string        // "" = $HOME
	SSHConfig      string        // "" = Home/.ssh/config; missing file is fine
	KnownHosts     []string      // "" = UserKnownHostsFile and GlobalKnownHostsFile from config, else Home/.ssh/known_hosts{,2} and /etc/ssh/ssh_known_hosts{,2}
	AcceptNew      bool          // add unknown host keys to the first known_hosts file (never changed ones)
	IdentityFiles  []string      // extra identities (like ssh -i), offered first
	KeepAlive      time.Duration // 0 = ServerAliveInterval from config, else 15s
	ConnectTimeout time.Duration // 0 = ConnectTimeout from config, else 10s; per hop
	Log            io.Writer     // one-line notes (new host key accepted, ...) and ProxyCommand stderr; nil = discard

	// BuiltinSSHConfig resolves destinations with nbship's own reading
	// of the ssh config even where OpenSSH's ssh is installed (which is
	// otherwise asked, with ssh -G). Tests use it to compare the two.
	BuiltinSSHConfig bool
}

// Client is one SSH connection to a host, shared by every command run on
// it. It is safe for concurrent use. Close it when done: that also ends
// every command still running on it (see Cmd).
type Client struct {
	name string
	ssh  *ssh.Client
	conn net.Conn      // transport under ssh (a TCP conn, or a channel of the last jump)
	jump []*ssh.Client // jump hosts, nearest first
	log  io.Writer

	done chan struct{} // closed when the connection has ended

	mu     sync.Mutex
	closed bool
	lost   error // why the connection ended, unless Close ended it
	procs  map[*Process]struct{}
	agent  *agentLink // set by UseAgent
}

// Dial connects to dest: [user@]host[:port] or a Host alias of the ssh
// config, through its ProxyJump hosts if it has any. The host key of every
// hop is checked before anything is sent to it but the key exchange; an
// unknown or changed key gives a *HostKeyError.
func Dial(ctx context.Context, dest string, cfg Config) (*Client, error) {
	s, err := loadSettings(cfg)
	if err != nil {
		return nil, err
	}
	s.ctx = ctx
	log := cfg.Log
	if log == nil {
		log = io.Discard
	}
	t, err := s.resolve(dest)
	if err != nil {
		return nil, err
	}
	jump, err := s.dialJumps(ctx, t, log, 0)
	if err != nil {
		return nil, err
	}
	var via *ssh.Client
	if len(jump) > 0 {
		via = jump[len(jump)-1]
	}
	sc, conn, err := s.connect(ctx, t, via, log)
	if err != nil {
		closeAll(jump)
		return nil, err
	}
	c := &Client{
		name:  dest,
		ssh:   sc,
		conn:  conn,
		jump:  jump,
		log:   log,
		done:  make(chan struct{}),
		procs: make(map[*Process]struct{}),
	}
	go c.watch()
	go c.keepalive(t.keepAlive, t.aliveCountMax)
	return c, nil
}

// dialJumps connects the ProxyJump chain of t and returns its clients,
// nearest first. The first hop's own ProxyJump is followed (as OpenSSH
// does); the later hops are reached through the previous one.
func (s *settings) dialJumps(ctx context.Context, t *target, log io.Writer, depth int) ([]*ssh.Client, error) {
	if len(t.proxyJump) == 0 {
		return nil, nil
	}
	if depth+len(t.proxyJump) > maxJumps {
		return nil, fmt.Errorf("ssh: %s: more than %d ProxyJump hops (a loop in %s?)", t.dest, maxJumps, s.file)
	}
	first, err := s.resolve(t.proxyJump[0])
	if err != nil {
		return nil, err
	}
	chain, err := s.dialJumps(ctx, first, log, depth+len(t.proxyJump))
	if err != nil {
		return nil, err
	}
	for i, hop := range t.proxyJump {
		ht := first
		if i > 0 {
			if ht, err = s.resolve(hop); err != nil {
				closeAll(chain)
				return nil, err
			}
		}
		var via *ssh.Client
		if len(chain) > 0 {
			via = chain[len(chain)-1]
		}
		c, _, err := s.connect(ctx, ht, via, log)
		if err != nil {
			closeAll(chain)
			return nil, fmt.Errorf("%w (jump host for %s)", err, t.dest)
		}
		chain = append(chain, c)
	}
	return chain, nil
}

func closeAll(cs []*ssh.Client) {
	for _, c := range slices.Backward(cs) {
		c.Close()
	}
}

// connect makes one SSH connection to t, directly or through via. The
// TCP connect, key exchange and authentication together get
// t.connectTimeout; cancelling ctx closes the connection under a blocked
// handshake.
func (s *settings) connect(ctx context.Context, t *target, via *ssh.Client, log io.Writer) (*ssh.Client, net.Conn, error) {
	hk, err := newHostKeys(t, s.cfg, log)
	if err != nil {
		return nil, nil, err
	}
	ids, err := loadIdentities(t, s.cfg.IdentityFiles, s.home)
	if err != nil {
		return nil, nil, err
	}
	defer ids.close()

	var refused error // from the host key check
	cc := &ssh.ClientConfig{
		User: t.user,
		Auth: []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			return ids.signers, nil
		})},
		HostKeyCallback:   hk.callback(&refused),
		HostKeyAlgorithms: hk.algorithms(),
	}

	tctx, cancel := context.WithTimeout(ctx, t.connectTimeout)
	defer cancel()
	stopped := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("ssh: %s: connecting to %s: %w", t.dest, t.addr(), ctx.Err())
		}
		if tctx.Err() != nil {
			return fmt.Errorf("ssh: %s: connecting to %s: timed out after %v: %w", t.dest, t.addr(), t.connectTimeout, tctx.Err())
		}
		return err
	}

	var conn net.Conn
	var pc *proxyConn // a ProxyCommand, used (as by OpenSSH) only for a host not reached through a jump
	switch {
	case via != nil:
		conn, err = via.DialContext(tctx, "tcp", t.addr())
	case t.proxyCommand != "":
		pc, err = dialProxyCommand(t, log)
		if err != nil {
			return nil, nil, err
		}
		conn = pc
	default:
		var d net.Dialer
		conn, err = d.DialContext(tctx, "tcp", t.addr())
	}
	if err != nil {
		return nil, nil, stopped(fmt.Errorf("ssh: %s: connecting to %s: %w", t.dest, t.addr(), err))
	}

	stop := context.AfterFunc(tctx, func() { conn.Close() })
	sconn, chans, reqs, err := ssh.NewClientConn(conn, t.addr(), cc)
	if !stop() {
		// The handshake was cut short (or finished just as time ran out).
		if err == nil {
			sconn.Close()
		}
		conn.Close()
		return nil, nil, stopped(err)
	}
	if err != nil {
		if refused != nil {
			conn.Close()
			return nil, nil, refused
		}
		if pc != nil {
			// Most likely the command failed: say how.
			err = pc.failure(ctx, fmt.Errorf("ssh: %s: through ProxyCommand %q: %w", t.dest, pc.command, err))
			conn.Close()
			return nil, nil, err
		}
		conn.Close()
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, nil, authError(t, ids, err)
		}
		return nil, nil, fmt.Errorf("ssh: %s: %w", t.dest, err)
	}
	return ssh.NewClient(sconn, chans, reqs), conn, nil
}

func authError(t *target, ids *identities, err error) error {
	var b strings.Builder
	fmt.Fprintf(&b, "ssh: %s: the host refused every key offered for user %s", t.dest, t.user)
	if len(ids.signers) == 0 {
		b.WriteString(" (there were none: no ssh-agent keys and no identity files)")
	} else {
		fps := make([]string, len(ids.signers))
		for i, s := range ids.signers {
			fps[i] = ssh.FingerprintSHA256(s.PublicKey())
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(fps, ", "))
	}
	for _, n := range ids.notes {
		b.WriteString("; ")
		b.WriteString(n)
	}
	return fmt.Errorf("%s: %w", b.String(), err)
}

// Name returns the destination as given to Dial.
func (c *Client) Name() string { return c.name }

// Addr is the address the connection reached: the host's TCP address, or
// through ProxyJump, the address the last jump host dialled.
func (c *Client) Addr() net.Addr { return c.conn.RemoteAddr() }

// watch notes the end of the connection, however it came.
func (c *Client) watch() {
	err := c.ssh.Wait()
	c.mu.Lock()
	if c.lost == nil && !c.closed {
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("the host closed the connection")
		}
		c.lost = err
	}
	c.mu.Unlock()
	c.conn.Close() // ends a ProxyCommand
	closeAll(c.jump)
	close(c.done)
}

// keepalive sends keepalive@openssh.com every interval, one at a time.
// After max intervals without an answer the connection is declared dead
// and closed, which ends every command on it with an error.
func (c *Client) keepalive(interval time.Duration, max int) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	replies := make(chan error, 1)
	waiting, missed := false, 0
	for {
		select {
		case <-c.done:
			return
		case err := <-replies:
			if err != nil {
				return // the connection is gone; watch reports it
			}
			waiting, missed = false, 0
		case <-tick.C:
			if !waiting {
				waiting = true
				go func() {
					// OpenSSH answers with a failure: any answer will do.
					_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
					replies <- err
				}()
				continue
			}
			missed++
			if missed >= max {
				c.fail(fmt.Errorf("no answer to %d keepalives in %v", missed, time.Duration(missed)*interval))
				return
			}
		}
	}
}

// fail ends the connection because it is unusable.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.lost == nil && !c.closed {
		c.lost = err
	}
	c.mu.Unlock()
	c.ssh.Close()
	closeAll(c.jump)
}

// connErr returns why the connection cannot be used, or nil.
func (c *Client) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return fmt.Errorf("ssh: %s: %w", c.name, net.ErrClosed)
	case c.lost != nil:
		return fmt.Errorf("ssh: %s: connection lost: %w", c.name, c.lost)
	}
	return nil
}

// Close ends the connection and every command still running on it. It
// first asks each running command to stop (a TERM signal and EOF on its
// stdin), then closes the connection; on the host, sshd closing the
// sessions makes the command wrapper kill what is left (see Cmd).
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := make([]*Process, 0, len(c.procs))
	for p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()

	// Stopping writes to the connection, which may be stuck: give it a
	// moment, then close anyway.
	sent := make(chan struct{})
	go func() {
		for _, p := range procs {
			p.stop(errClientClosed)
		}
		close(sent)
	}()
	select {
	case <-sent:
	case <-time.After(time.Second):
	}
	c.ssh.Close()
	closeAll(c.jump)
	<-c.done
	return nil
}

var errClientClosed = errors.New("client closed")

func (c *Client) track(p *Process) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.procs[p] = struct{}{}
	return true
}

func (c *Client) untrack(p *Process) {
	c.mu.Lock()
	delete(c.procs, p)
	c.mu.Unlock()
}
