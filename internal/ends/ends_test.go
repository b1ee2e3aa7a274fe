package ends

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/transfer"
	"github.com/nbship/nbship/tunnel"
)

// somePin is a well-formed pin that no end has.
var somePin = tunnel.Fingerprint([]byte("no such end"))

func writeFile(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Each end's stdout is the other's stdin, as the controller wires them on
// the SSH path: each reads the other's fingerprint line as the pin, then
// TLS follows on the same pipes.
func TestStdioFilesIntoDir(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Image"), "kernel")
	writeFile(t, filepath.Join(src, "boot", "initrd"), "initrd")
	dest := filepath.Join(t.TempDir(), "out")

	// OS pipes, which buffer: both ends print their pin before either
	// reads.
	recvIn, sendOut := osPipe(t)
	sendIn, recvOut := osPipe(t)
	var recvErr, sendErr bytes.Buffer // each written by its end only
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		s   *protocol.Stream
		err error
	}
	recvDone := make(chan result, 1)
	go func() {
		s, err := Receive(ctx, ReceiveOptions{
			Channel: Channel{Stdin: recvIn, Stdout: recvOut, Stderr: &recvErr, Stdio: true, PeerPin: "-"},
			Target:  Dir{Path: dest},
		})
		recvDone <- result{s, err}
	}()
	sent, err := Send(ctx, SendOptions{
		Channel: Channel{Stdin: sendIn, Stdout: sendOut, Stderr: &sendErr, Stdio: true, PeerPin: "-"},
		Source:  Files{Paths: []string{filepath.Join(src, "Image"), filepath.Join(src, "boot")}},
	})
	if err != nil {
		t.Fatalf("Send: %v\n%s", err, sendErr.String())
	}
	r := <-recvDone
	if r.err != nil {
		t.Fatalf("Receive: %v\n%s", r.err, recvErr.String())
	}
	for name, want := range map[string]string{"Image": "kernel", "initrd": "initrd"} {
		if b, err := os.ReadFile(filepath.Join(dest, name)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", name, b, err, want)
		}
	}
	if sent.Files != 2 || r.s.Files != 2 || r.s.Published != dest {
		t.Errorf("summaries: sent %d files, received %d into %q; want 2, 2 into %q", sent.Files, r.s.Files, r.s.Published, dest)
	}
	ents, _ := os.ReadDir(filepath.Dir(dest))
	if len(ents) != 1 {
		t.Errorf("beside %s: %d entries, want only it (no staging left)", dest, len(ents))
	}
}

func osPipe(t *testing.T) (*os.File, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// What an end refuses before it has printed its pin, it refuses with
// nothing on stdout: the controller reads the first line as the pin.
func TestRefusedBeforeAnythingIsPrinted(t *testing.T) {
	full := t.TempDir()
	writeFile(t, filepath.Join(full, "old"), "x")
	missingParent := filepath.Join(t.TempDir(), "no", "dir")
	recv := func(c Channel, listen string, target Target) error {
		_, err := Receive(context.Background(), ReceiveOptions{Channel: c, Listen: listen, Target: target, AcceptTimeout: time.Second})
		return err
	}
	send := func(c Channel, connect string, src Source) error {
		_, err := Send(context.Background(), SendOptions{Channel: c, Connect: connect, Source: src, DialTimeout: time.Second})
		return err
	}
	for _, tc := range []struct {
		name string
		run  func(Channel) error
		code int
		msg  string // in the error
		hint string // in the hint
	}{
		{"recv without a pin", func(c Channel) error { c.PeerPin = ""; return recv(c, "127.0.0.1:0", Dir{Path: missingParent}) }, protocol.ExitUsage, "--peer-pin is required", ""},
		{"recv with listen and stdio", func(c Channel) error { c.Stdio = true; return recv(c, "127.0.0.1:0", Dir{Path: missingParent}) }, protocol.ExitUsage, "exactly one of --listen", ""},
		{"recv into a non-empty dir", func(c Channel) error { return recv(c, "127.0.0.1:0", Dir{Path: full}) }, 0, "is not empty", "--replace"},
		{"recv under a missing parent", func(c Channel) error { return recv(c, "127.0.0.1:0", Dir{Path: missingParent}) }, 0, "parent directory", "create"},
		{"recv into a slot of no instance", func(c Channel) error { return recv(c, "127.0.0.1:0", Slot{PXEDir: full}) }, protocol.ExitUsage, "--instance", ""},
		{"sender without a pin", func(c Channel) error { c.PeerPin = ""; return send(c, "127.0.0.1:9", Files{Paths: []string{full}}) }, protocol.ExitUsage, "--peer-pin is required", ""},
		{"sender with nothing", func(c Channel) error { return send(c, "127.0.0.1:9", Files{}) }, protocol.ExitUsage, "no PATH", ""},
		{"sender of a bad store path", func(c Channel) error {
			return send(c, "127.0.0.1:9", StorePaths{Paths: []string{"/tmp/x"}, Files: true})
		}, protocol.ExitUsage, "is not a store path", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := tc.run(Channel{Stdin: strings.NewReader(somePin + "\n"), Stdout: &stdout, Stderr: &stderr, PeerPin: "-"})
			code, hint := protocol.Explain(err)
			if err == nil || !strings.Contains(err.Error(), tc.msg) || code != tc.code || !strings.Contains(hint, tc.hint) {
				t.Errorf("error %v (exit %d, hint %q); want one with %q, exit %d, hint with %q", err, code, hint, tc.msg, tc.code, tc.hint)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
		})
	}
}

// The pin line is read a byte at a time: what follows it on stdin (the
// channel, with --stdio) is left for the next reader.
func TestPeerPinLeavesTheRest(t *testing.T) {
	for _, tc := range []struct {
		in, pin, rest string
		ok            bool
	}{
		{"fingerprint " + somePin + "\nTLS", somePin, "TLS", true},
		{somePin + "\n\x16\x03\x01", somePin, "\x16\x03\x01", true},
		{somePin, somePin, "", true}, // EOF ends the line
		{"", "", "", false},
		{"fingerprint SHA256:short\nrest", "", "rest", false},
		{strings.Repeat("x", 300) + "\n", "", "", false}, // too long
	} {
		r := strings.NewReader(tc.in)
		pin, err := peerPin("-", r)
		if (err == nil) != tc.ok || pin != tc.pin {
			t.Errorf("peerPin(%q) = %q, %v; want %q (ok %v)", tc.in, pin, err, tc.pin, tc.ok)
		}
		if rest, _ := io.ReadAll(r); tc.ok && string(rest) != tc.rest {
			t.Errorf("peerPin(%q) left %q, want %q", tc.in, rest, tc.rest)
		}
	}
}

// The store paths that follow the pin on stdin are read through the same
// buffer as the pin: none of them is lost to it.
func TestStorePathsAfterThePin(t *testing.T) {
	path := "/nix/store/" + strings.Repeat("a", 32) + "-hello"
	br := bufio.NewReader(strings.NewReader(somePin + "\n" + path + "\n\nafter"))
	if _, err := peerPin("-", br); err != nil {
		t.Fatal(err)
	}
	paths, err := nixstore.ReadPaths(br, "standard input", true)
	if err != nil || len(paths) != 1 || paths[0] != path {
		t.Fatalf("paths after the pin = %q, %v; want [%s]", paths, err, path)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "after" {
		t.Errorf("after the paths: %q, want %q", rest, "after")
	}
}

// The idle watchdog: the transfer's error becomes its line, and an end
// still blocked five seconds later exits 1 with the same line, after
// removing what it staged.
func TestIdleWatchdogForcedExit(t *testing.T) {
	a, b := net.Pipe()
	ida, err := tunnel.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	idb, err := tunnel.NewIdentity()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		if c, err := tunnel.ServerOver(ctx, a, ida, idb.Pin()); err == nil {
			defer c.Close()
			<-ctx.Done()
		}
	}()
	conn, err := tunnel.ClientOver(ctx, b, idb, ida.Pin())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	var stderr bytes.Buffer // written before the exit, read after
	exited := make(chan int, 1)
	cleaned := make(chan struct{})
	c := &Channel{Stderr: &stderr, Idle: 100 * time.Millisecond, Exit: func(code int) { exited <- code }}
	wctx, w, stop := watchIdle(ctx, c, conn, "recv")
	defer stop()
	w.atExit(func() { close(cleaned) })
	<-wctx.Done()
	line := "recv: nothing crossed the channel for 100ms: the other end, its host or the link is gone"
	if err := w.explain(errors.New("read: closed")); err == nil || err.Error() != line {
		t.Errorf("explain = %v, want %q", err, line)
	}
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("forced exit %d, want 1", code)
		}
	case <-ctx.Done():
		t.Fatal("no forced exit")
	}
	select {
	case <-cleaned:
	default:
		t.Error("the forced exit ran before (or without) the cleanups")
	}
	if got := stderr.String(); got != "nbship: "+line+"\n" {
		t.Errorf("stderr = %q, want the line", got)
	}
}

func TestRefusal(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("recv: %w", &transfer.PeerRefusedError{Reason: "bad"}), protocol.ExitRefused},
		{fmt.Errorf("send: %w", &tunnel.PinError{Want: somePin}), protocol.ExitPin},
		{fmt.Errorf("send: %w", &tunnel.RefusedError{Ours: somePin, Err: io.EOF}), protocol.ExitPin},
		{errors.New("recv: read: connection reset"), 0},
	} {
		if code, _ := protocol.Explain(Refusal(tc.err)); code != tc.code {
			t.Errorf("Refusal(%v): exit %d, want %d", tc.err, code, tc.code)
		}
	}
}

// An end the controller started says why it refused in the protocol's
// line; a refusal it repeats from the receiver says so.
func TestSayRefused(t *testing.T) {
	manifest := fmt.Errorf("recv: %w", &transfer.ManifestError{Name: "x", Msg: "bad name"})
	peer := fmt.Errorf("send: %w", &transfer.PeerRefusedError{Reason: "transfer: refused stream: bad"})
	for _, tc := range []struct {
		name     string
		lifeline bool
		err      error
		want     string
	}{
		{"receiver", true, Refusal(manifest), protocol.Refusal{Reason: `refused entry "x": bad name`}.Line() + "\n"},
		{"sender repeating it", true, Refusal(peer), protocol.Refusal{Peer: true, Reason: "bad"}.Line() + "\n"},
		{"started by hand", false, Refusal(manifest), ""},
		{"not a refusal", true, errors.New("recv: link gone"), ""},
		{"a pin", true, Refusal(fmt.Errorf("send: %w", &tunnel.PinError{Want: somePin})), ""},
	} {
		var stderr bytes.Buffer
		c := &Channel{Stderr: &stderr, Lifeline: tc.lifeline}
		c.sayRefused(tc.err)
		if stderr.String() != tc.want {
			t.Errorf("%s: stderr %q, want %q", tc.name, stderr.String(), tc.want)
		}
	}
}
