package kexec

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// download and receive keep a file only when it has the published size
// and SHA-256; a URL that does not serve it at all is unreachable (the
// controller may send it), a wrong file is not.
func TestFetchChecksSizeAndHash(t *testing.T) {
	data := []byte("the published kernel")
	sum := sha256.Sum256(data)
	good := File{Name: "bzImage", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good":
			w.Write(data)
		case "/other":
			w.Write([]byte("another kernel, same size"[:len(data)]))
		case "/longer":
			w.Write(append(data, '!'))
		default:
			http.NotFound(w, r)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	base := "http://" + ln.Addr().String()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + closed.Addr().String() + "/good"
	closed.Close()

	tests := []struct {
		url         string
		unreachable bool
		err         string
	}{
		{base + "/good", false, ""},
		{base + "/other", false, "has SHA-256"},
		{base + "/longer", false, "is 21 bytes"},
		{base + "/missing", true, "404"},
		{deadURL, true, "not reachable"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		f := good
		f.URL = tt.url
		err := download(context.Background(), f, filepath.Join(dir, "kernel"))
		var ue *unreachableError
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("download(%s) = %v, want nil", tt.url, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("download(%s) = %v, want error with %q", tt.url, err, tt.err)
		case err != nil && errors.As(err, &ue) != tt.unreachable:
			t.Errorf("download(%s) = %v, unreachable %v, want %v", tt.url, err, !tt.unreachable, tt.unreachable)
		}
		left, _ := os.ReadDir(dir)
		if (err == nil) != (len(left) == 1) {
			t.Errorf("download(%s) = %v and left %d files, want the file only on success", tt.url, err, len(left))
		}
	}

	for _, tt := range []struct {
		in  string
		err string
	}{
		{string(data), ""},
		{string(data[:5]), "is 5 bytes"},
		{"another kernel, same size"[:len(data)], "has SHA-256"},
	} {
		dir := t.TempDir()
		err := receive(strings.NewReader(tt.in), good, filepath.Join(dir, "kernel"))
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("receive(%q) = %v, want error with %q", tt.in, err, tt.err)
		}
		if left, _ := os.ReadDir(dir); (err == nil) != (len(left) == 1) {
			t.Errorf("receive(%q) = %v and left %d files, want the file only on success", tt.in, err, len(left))
		}
	}
}
