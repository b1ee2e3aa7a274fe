package kexec

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/tail"
)

// Event is one line the end writes on its standard output for the
// controller, as JSON.
type Event struct {
	Event string   `json:"event"`           // send, loaded, exec
	Files []string `json:"files,omitempty"` // send: the files to write on stdin, in this order
	How   string   `json:"how,omitempty"`   // exec: "kexec -e" or "systemctl kexec"
	Msg   string   `json:"msg,omitempty"`   // send: why the URL did not do
}

// EndOptions are the end's streams and machine.
type EndOptions struct {
	Stdin  io.Reader // the plan line, then the files if asked for, then EOF when the controller is gone
	Stdout io.Writer // events
	Stderr io.Writer // notes
	Host   Host
	TmpDir string // where the files are written; "" = os.TempDir()
	// Exec runs the loaded kernel; nil = kexec -e, or systemctl kexec
	// under systemd. Tests of everything else set it.
	Exec func(ctx context.Context, kexecPath string) error
}

// maxPlanLine bounds the plan line.
const maxPlanLine = 64 << 10

// End carries out a plan on this host: the hidden command kexec-end. It
// reads the plan, refuses (*RefusedError) before loading anything when the
// host cannot boot the image, fetches and checks the files, loads them and
// executes the new kernel. It returns only when something failed, or when
// systemd was asked to do the kexec. When standard input reaches EOF (the
// controller went away) before the kernel runs, it stops, unloads what it
// loaded and removes its files.
func End(ctx context.Context, o EndOptions) error {
	in := bufio.NewReader(o.Stdin)
	line, err := readLine(in, maxPlanLine)
	if err != nil {
		return fmt.Errorf("kexec: reading the plan from standard input: %w", err)
	}
	p, err := decodePlan(line)
	if err != nil {
		return err
	}

	// Standard input is the controller's lifeline; the files it sends
	// when asked come through the pipe.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if _, werr := pw.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				pw.CloseWithError(io.ErrUnexpectedEOF)
				cancel(errors.New("kexec: the controller went away (standard input closed)"))
				return
			}
		}
	}()
	defer pr.Close()
	// A signal (the controller stopping this end) ends a receive too.
	stopRecv := context.AfterFunc(ctx, func() { pr.CloseWithError(context.Cause(ctx)) })
	defer stopRecv()

	h := o.Host
	if err := h.CheckArch(p.System); err != nil {
		return err
	}
	kexecPath, err := h.CheckKexec()
	if err != nil {
		return err
	}
	if err := h.CheckMemory(p.Kernel.Size, p.Initrd.Size); err != nil {
		return err
	}

	dir, err := os.MkdirTemp(o.TmpDir, "nbship-kexec-")
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	defer os.RemoveAll(dir)
	kernel, initrd := filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd")
	files := []struct {
		f    File
		path string
	}{{p.Kernel, kernel}, {p.Initrd, initrd}}

	viaURL := p.Kernel.URL != "" && p.Initrd.URL != ""
	if viaURL {
		for _, f := range files {
			start := time.Now()
			err := download(ctx, f.f, f.path)
			var ue *unreachableError
			if errors.As(err, &ue) && !p.NoStdin {
				viaURL = false
				if err := writeEvent(o.Stdout, Event{Event: "send", Files: []string{p.Kernel.Name, p.Initrd.Name}, Msg: err.Error()}); err != nil {
					return err
				}
				break
			}
			if err != nil {
				return cause(ctx, err)
			}
			fmt.Fprintf(o.Stderr, "nbship: fetched %s (%d bytes, SHA-256 checked) from %s in %.1fs\n", f.f.Name, f.f.Size, f.f.URL, time.Since(start).Seconds())
		}
	} else {
		if err := writeEvent(o.Stdout, Event{Event: "send", Files: []string{p.Kernel.Name, p.Initrd.Name}}); err != nil {
			return err
		}
	}
	if !viaURL {
		for _, f := range files {
			if err := receive(pr, f.f, f.path); err != nil {
				return cause(ctx, err)
			}
			fmt.Fprintf(o.Stderr, "nbship: received %s (%d bytes, SHA-256 checked) from the controller\n", f.f.Name, f.f.Size)
		}
	}

	// The hashes say these are the published files; the header says
	// once more what the kernel is, before kexec reads it.
	kf, err := os.Open(kernel)
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	sys, err := image.KernelSystem(kf)
	kf.Close()
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	if sys != p.System {
		if sys == "" {
			sys = "neither an arm64 Image nor an x86 bzImage"
		}
		return refuse("%s of %s %s is %s, but the plan says %s; publish the image again", p.Kernel.Name, p.Instance, p.Generation, sys, p.System)
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}

	load := exec.CommandContext(ctx, kexecPath, "-l", kernel, "--initrd="+initrd, "--command-line="+p.Cmdline)
	var lerr bytes.Buffer
	load.Stdout, load.Stderr = &lerr, &lerr
	if err := load.Run(); err != nil {
		unload(kexecPath)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return fmt.Errorf("kexec: kexec -l %s: %v: %s", p.Kernel.Name, err, tail.Reason(lerr.String()))
	}
	// kexec holds its copy in kernel memory now.
	os.RemoveAll(dir)
	if err := writeEvent(o.Stdout, Event{Event: "loaded"}); err != nil {
		unload(kexecPath)
		return err
	}
	if err := ctx.Err(); err != nil {
		unload(kexecPath)
		return context.Cause(ctx)
	}
	run := o.Exec
	how := "kexec -e"
	if h.systemd() {
		how = "systemctl kexec"
	}
	if run == nil {
		run = func(ctx context.Context, kexecPath string) error {
			return execute(kexecPath, how)
		}
	}
	if err := writeEvent(o.Stdout, Event{Event: "exec", How: how}); err != nil {
		unload(kexecPath)
		return err
	}
	if err := run(ctx, kexecPath); err != nil {
		unload(kexecPath)
		return err
	}
	return nil
}

// decodePlan reads the plan line.
func decodePlan(line []byte) (Plan, error) {
	var p Plan
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return p, fmt.Errorf("kexec: the plan on standard input is not valid JSON: %w", err)
	}
	return p, p.Check()
}

// execute hands the machine to the loaded kernel. kexec -e does not come
// back when it works; systemctl kexec returns once systemd has the job.
func execute(kexecPath, how string) error {
	syscall.Sync()
	var cmd *exec.Cmd
	if how == "systemctl kexec" {
		cmd = exec.Command("systemctl", "kexec")
	} else {
		cmd = exec.Command(kexecPath, "-e")
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kexec: %s: %v: %s", how, err, tail.Reason(out.String()))
	}
	return nil
}

// unload drops a loaded kernel, so that nothing is left armed.
func unload(kexecPath string) {
	exec.Command(kexecPath, "-u").Run()
}

// cause is err, or why ctx ended when it did.
func cause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

func writeEvent(w io.Writer, ev Event) error {
	b, _ := json.Marshal(ev)
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("kexec: telling the controller: %w", err)
	}
	return nil
}

// readLine reads one line of at most max bytes, without the newline.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max {
			return nil, fmt.Errorf("the line is longer than %d bytes", max)
		}
		if err == nil {
			return bytes.TrimSuffix(line, []byte("\n")), nil
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && len(line) > 0 {
			return line, nil
		}
		if err == io.EOF {
			return nil, errors.New("standard input ended before the plan")
		}
		return nil, err
	}
}

// unreachableError is a URL the host could not get the file from at all
// (no route, refused, timed out, not served): the controller may send it
// instead. A file that came but was wrong is not one.
type unreachableError struct {
	url string
	err error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("kexec: %s is not reachable from this host: %v", e.url, e.err)
}
func (e *unreachableError) Unwrap() error { return e.err }

// fetchClient is the HTTP client of download: a connection must be made
// within 10 s and the response headers come 30 s after the request.
var fetchClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	TLSHandshakeTimeout:   10 * time.Second,
	ResponseHeaderTimeout: 30 * time.Second,
}}

// download fetches f into path, checking its size and SHA-256 as it comes.
func download(ctx context.Context, f File, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	resp, err := fetchClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &unreachableError{f.URL, err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &unreachableError{f.URL, fmt.Errorf("the server answered %s", resp.Status)}
	}
	if resp.ContentLength >= 0 && resp.ContentLength != f.Size {
		return fmt.Errorf("kexec: %s is %d bytes, but %s of the published generation is %d; the slot changed while booting? run nbship kexec again", f.URL, resp.ContentLength, f.Name, f.Size)
	}
	return save(resp.Body, f, path, "from "+f.URL)
}

// receive reads f from the controller's stream into path.
func receive(r io.Reader, f File, path string) error {
	return save(io.LimitReader(r, f.Size), f, path, "from the controller")
}

// save writes exactly f.Size bytes of r to path and checks their SHA-256.
// On any error the file is removed.
func save(r io.Reader, f File, path, from string) (err error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("kexec: writing %s: %w", f.Name, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(r, f.Size+1))
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) {
			return fmt.Errorf("kexec: writing %s to %s: the file system is full; free space there or set TMPDIR", f.Name, filepath.Dir(path))
		}
		return fmt.Errorf("kexec: %s %s: %w", f.Name, from, err)
	}
	if n != f.Size {
		return fmt.Errorf("kexec: %s %s is %d bytes, want %d", f.Name, from, n, f.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("kexec: %s %s has SHA-256 %s, want %s (the published one); run nbship kexec again, and if it repeats, check what serves it", f.Name, from, got, f.SHA256)
	}
	return nil
}
