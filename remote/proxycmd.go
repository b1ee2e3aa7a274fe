package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nbship/nbship/internal/tail"
)

// proxyConn is a connection through a ProxyCommand: the command's stdin
// and stdout, as OpenSSH uses them. Closing it ends the command (its
// whole process group) and waits for it.
type proxyConn struct {
	host    string
	command string // expanded, for messages
	cmd     *exec.Cmd
	r       *os.File // the command's stdout
	w       *os.File // the command's stdin
	stderr  *tail.Buffer
	exited  chan struct{}
	// closed when stderr is at its end (everything holding it is gone)
	stderrDone chan struct{}
	waitErr    error

	closeOnce sync.Once
}

// expandProxyCommand expands the tokens OpenSSH expands in a ProxyCommand.
func (t *target) expandProxyCommand() (string, error) {
	alias := t.hostKeyAlias
	if alias == "" {
		alias = t.alias
	}
	return percentExpand(t.proxyCommand, map[byte]string{
		'%': "%", 'h': t.hostname, 'k': alias, 'n': t.alias, 'p': strconv.Itoa(t.port), 'r': t.user,
	})
}

// dialProxyCommand starts t's ProxyCommand, as ssh does: "exec COMMAND"
// through the user's shell, its stderr passed on to log.
func dialProxyCommand(t *target, log io.Writer) (*proxyConn, error) {
	command, err := t.expandProxyCommand()
	if err != nil {
		return nil, fmt.Errorf("ssh: %s: ProxyCommand %q: %w", t.dest, t.proxyCommand, err)
	}
	if command == "-" {
		return nil, fmt.Errorf("ssh: %s: ProxyCommand - (an already connected stdin/stdout) is not supported", t.dest)
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("ssh: %s: ProxyCommand: %w", t.dest, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("ssh: %s: ProxyCommand: %w", t.dest, err)
	}
	c := &proxyConn{
		host:    t.dest,
		command: command,
		r:       outR,
		w:       inW,
		stderr:  &tail.Buffer{Echo: log},
		exited:  make(chan struct{}),
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("ssh: %s: ProxyCommand: %w", t.dest, err)
	}
	c.cmd = exec.Command(userShell(), "-c", "exec "+command)
	// All three are files, so that Wait returns when the command exits
	// even if something it started still holds them.
	c.cmd.Stdin, c.cmd.Stdout, c.cmd.Stderr = inR, outW, errW
	// A group of its own: closing kills what the command started too.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = c.cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		inW.Close()
		errR.Close()
		return nil, fmt.Errorf("ssh: %s: ProxyCommand %q could not start: %w", t.dest, command, err)
	}
	c.stderrDone = make(chan struct{})
	go func() {
		io.Copy(c.stderr, errR)
		errR.Close()
		close(c.stderrDone)
	}()
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

func (c *proxyConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *proxyConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *proxyConn) Close() error {
	c.closeOnce.Do(func() {
		c.w.Close()
		c.r.Close()
		select {
		case <-c.exited:
		default:
			syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(2 * time.Second):
				syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
				<-c.exited
			}
		}
		// What the command left in its group goes too.
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	})
	return nil
}

// failure explains a connection that failed through the command: if the
// command has ended (or ends soon), one line with its exit and the last
// line it wrote to stderr.
func (c *proxyConn) failure(ctx context.Context, err error) error {
	select {
	case <-c.exited:
	case <-time.After(time.Second):
		return err
	case <-ctx.Done():
		return err
	}
	// Its last words may still be in the pipe.
	select {
	case <-c.stderrDone:
	case <-time.After(200 * time.Millisecond):
	}
	how := "exited"
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) {
		how = "exited with status " + strconv.Itoa(ee.ExitCode())
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			how = "was killed by signal " + st.Signal().String()
		}
	}
	msg := fmt.Sprintf("ssh: %s: ProxyCommand %q %s", c.host, c.command, how)
	if l := tail.Reason(c.stderr.Last()); l != "" {
		msg += ": " + l
	}
	return errors.New(msg)
}

func (c *proxyConn) LocalAddr() net.Addr                { return proxyAddr(c.command) }
func (c *proxyConn) RemoteAddr() net.Addr               { return proxyAddr(c.command) }
func (c *proxyConn) SetDeadline(t time.Time) error      { c.r.SetDeadline(t); return c.w.SetDeadline(t) }
func (c *proxyConn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *proxyConn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }

type proxyAddr string

func (proxyAddr) Network() string  { return "proxycommand" }
func (a proxyAddr) String() string { return string(a) }
