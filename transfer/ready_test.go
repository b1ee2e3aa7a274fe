package transfer

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestSendHeaderDoesNotWaitForReady: the sender's preface and header cross
// the receiver's ready message on the wire instead of following it (a
// round trip saved on a long link). The receiver here sends ready only
// once it has read the header, over a pipe with no buffer: a sender that
// waited for ready first would never send it.
func TestSendHeaderDoesNotWaitForReady(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	mkfile(t, f, []byte("some bytes\n"), 0o644)
	src, err := Collect(context.Background(), []string{f})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	sent := make(chan error, 1)
	go func() {
		_, err := Send(context.Background(), a, src, SendOptions{})
		sent <- err
	}()
	b.SetDeadline(time.Now().Add(10 * time.Second))
	pre := make([]byte, len(magic)+2)
	if _, err := io.ReadFull(b, pre); err != nil {
		t.Fatalf("reading the preface before sending ready: %v", err)
	}
	m, err := expectManifest(b)
	if err != nil {
		t.Fatalf("reading the header before sending ready: %v", err)
	}
	if len(m.Entries) != 1 || m.Entries[0].Name != "file" {
		t.Fatalf("header entries %+v, want the one file", m.Entries)
	}
	ready, _ := json.Marshal(readyMsg{Version: Version})
	if err := writeMsg(b, msgReady, ready); err != nil {
		t.Fatalf("sending ready after the header: %v", err)
	}
	b.Close()
	select {
	case <-sent: // it fails without a want list: only the order was tested
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not return after the receiver closed")
	}
}
