package remote

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ServeAgent is `nbship agent`, the host's end of the one long-lived
// session the controller keeps per host (see docs/design.md, "One session
// per host"). It listens on a unix socket in a new private directory,
// prints "nbship-agent-socket PATH" on stdout and runs one command per
// connection, as its own child in a process group of its own, with no
// shell. Its stdin is the controller's lifeline: at EOF (the controller
// closed the session, or vanished and sshd closed it) it kills every
// command still running, removes the directory and returns. So does
// cancelling ctx (SIGTERM).
func ServeAgent(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) error {
	// Writes to a closed stdout or stderr must fail, not kill the agent
	// before it has cleaned up. A caught (not ignored) SIGPIPE is reset
	// to its default in the commands it starts.
	pipes := make(chan os.Signal, 1)
	signal.Notify(pipes, syscall.SIGPIPE)
	defer signal.Stop(pipes)

	dir, err := agentDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	l.SetUnlinkOnClose(true)
	if _, err := fmt.Fprintf(stdout, "%s%s\n", agentLinePfx, sock); err != nil {
		l.Close()
		return fmt.Errorf("agent: %w", err)
	}

	a := &agentServer{running: map[*agentChild]struct{}{}, log: stderr}
	lifeline := make(chan struct{})
	go watchLifeline(stdin, stderr, lifeline)
	go func() {
		select {
		case <-lifeline:
		case <-ctx.Done():
		}
		l.Close()
	}()
	var wg sync.WaitGroup
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serve(conn)
		}()
	}
	a.killAll()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(killGrace + 2*time.Second):
	}
	return nil
}

// The controller writes a byte to the agent's stdin every agentBeat. A
// connection that died without a word (a link gone down) never gives the
// agent EOF, as sshd does not notice either; so the agent also stops when
// it has heard nothing for lifelineTimeout.
const agentBeat = 5 * time.Second

var lifelineTimeout = 30 * time.Second // a variable for the tests

// watchLifeline closes lost at EOF on stdin, or when nothing came for
// lifelineTimeout.
func watchLifeline(stdin io.Reader, stderr io.Writer, lost chan<- struct{}) {
	beat := make(chan struct{}, 1)
	eof := make(chan struct{})
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				select {
				case beat <- struct{}{}:
				default:
				}
			}
			if err != nil {
				close(eof)
				return
			}
		}
	}()
	t := time.NewTimer(lifelineTimeout)
	defer t.Stop()
	for {
		select {
		case <-eof:
			close(lost)
			return
		case <-beat:
			t.Reset(lifelineTimeout)
		case <-t.C:
			fmt.Fprintf(stderr, "nbship agent: nothing from the controller for %v: stopping\n", lifelineTimeout)
			close(lost)
			return
		}
	}
}

// agentDir makes a new directory only this user can enter, under
// $XDG_RUNTIME_DIR, else ~/.cache/nbship, else the temp directory (a
// socket path must stay under ~100 bytes).
func agentDir() (string, error) {
	var bases []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		bases = append(bases, d)
	}
	if h, err := os.UserHomeDir(); err == nil {
		bases = append(bases, filepath.Join(h, ".cache", "nbship"))
	}
	bases = append(bases, os.TempDir())
	var errs []error
	for _, b := range bases {
		if len(b) > 80 {
			continue
		}
		if err := os.MkdirAll(b, 0o700); err != nil {
			errs = append(errs, err)
			continue
		}
		d, err := os.MkdirTemp(b, "agent-")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Chmod(d, 0o700); err != nil {
			os.Remove(d)
			errs = append(errs, err)
			continue
		}
		return d, nil
	}
	return "", fmt.Errorf("agent: no directory for the socket: %w", errors.Join(errs...))
}

// killGrace is how long a command has between TERM and KILL, as under
// the exec-session wrapper (see Cmd).
const killGrace = 5 * time.Second

type agentServer struct {
	log     io.Writer
	mu      sync.Mutex
	closing bool
	running map[*agentChild]struct{}
}

type agentChild struct {
	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
}

// kill sends TERM to the child's process group, and KILL after killGrace
// if the child has not ended by then.
func (c *agentChild) kill() {
	c.once.Do(func() {
		pid := c.cmd.Process.Pid
		syscall.Kill(-pid, syscall.SIGTERM)
		go func() {
			select {
			case <-c.done:
				// The leader is gone; members that lingered still go.
				syscall.Kill(-pid, syscall.SIGKILL)
			case <-time.After(killGrace):
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		}()
	})
}

func (a *agentServer) killAll() {
	a.mu.Lock()
	a.closing = true
	var cs []*agentChild
	for c := range a.running {
		cs = append(cs, c)
	}
	a.mu.Unlock()
	for _, c := range cs {
		c.kill()
	}
	for _, c := range cs {
		select {
		case <-c.done:
		case <-time.After(killGrace + time.Second):
		}
	}
}

// serve runs the one command a connection asks for.
func (a *agentServer) serve(conn *net.UnixConn) {
	defer conn.Close()
	br := bufio.NewReaderSize(conn, 64<<10)
	fw := &frameWriter{w: conn}
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	req, err := readRequest(br)
	conn.SetReadDeadline(time.Time{})
	if err == io.EOF {
		return
	}
	if err != nil {
		fmt.Fprintf(streamWriter{fw, frameStderr}, "nbship %v\n", err)
		fw.frame(frameExit, status(2))
		return
	}

	cmd := exec.Command(req.Argv[0], req.Argv[1:]...)
	cmd.Env = os.Environ()
	for k, v := range req.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if !strings.Contains(req.Argv[0], "/") {
		// Look the name up as a shell would, in the PATH the command gets.
		if p := lookPathIn(req.Argv[0], envValue(cmd.Env, "PATH")); p != "" {
			cmd.Path, cmd.Err = p, nil
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = streamWriter{fw, frameStdout}
	cmd.Stderr = streamWriter{fw, frameStderr}
	// StdinPipe, not an io.Pipe: Wait closes it when the command ends,
	// where a copying goroutine would wait for more stdin.
	var stdinW io.WriteCloser
	if req.Stdin {
		if stdinW, err = cmd.StdinPipe(); err != nil {
			fmt.Fprintf(streamWriter{fw, frameStderr}, "nbship agent: %v\n", err)
			fw.frame(frameExit, status(255))
			return
		}
	}

	a.mu.Lock()
	if a.closing {
		a.mu.Unlock()
		fmt.Fprintf(streamWriter{fw, frameStderr}, "nbship agent: shutting down\n")
		fw.frame(frameExit, status(255))
		return
	}
	if err := cmd.Start(); err != nil {
		a.mu.Unlock()
		// What a shell would say and return.
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		fmt.Fprintf(streamWriter{fw, frameStderr}, "nbship agent: %s: %v\n", req.Argv[0], errors.Unwrap(err))
		fw.frame(frameExit, status(code))
		return
	}
	child := &agentChild{cmd: cmd, done: make(chan struct{})}
	a.running[child] = struct{}{}
	a.mu.Unlock()

	// The controller's side: stdin frames, then EOF of stdin; the
	// connection ending (or anything unexpected) means the controller is
	// gone or gave up: kill.
	go func() {
		buf := make([]byte, 32<<10)
		for {
			typ, b, err := readFrame(br, buf)
			if err != nil {
				if stdinW != nil {
					stdinW.Close()
				}
				select {
				case <-child.done:
				default:
					child.kill()
				}
				return
			}
			buf = b[:cap(b)]
			switch {
			case typ == frameStdin && stdinW != nil:
				stdinW.Write(b) // fails once the command stopped reading: drop the rest
			case typ == frameStdinEOF && stdinW != nil:
				stdinW.Close()
			case typ == frameKill:
				child.kill()
			}
		}
	}()

	err = cmd.Wait()
	close(child.done)
	a.mu.Lock()
	delete(a.running, child)
	a.mu.Unlock()
	code := 0
	if err != nil {
		code = 255
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws := ee.Sys().(syscall.WaitStatus)
			switch {
			case ws.Exited():
				code = ws.ExitStatus()
			case ws.Signaled():
				code = 128 + int(ws.Signal())
			}
		}
	}
	fw.frame(frameExit, status(code))
}

func status(code int) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(int32(code)))
	return b[:]
}

func envValue(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val // the last one wins
		}
	}
	return v
}

// lookPathIn finds an executable named name in the directories of path.
func lookPathIn(name, path string) string {
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}
