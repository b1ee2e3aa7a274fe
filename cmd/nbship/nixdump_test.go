package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/nixstore"
)

// nixStoresOf lists the pids of processes running with root as their
// NIX_REMOTE: the nix-stores a test started on its own store.
func nixStoresOf(root string) []string {
	var pids []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		env, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if string(kv) == "NIX_REMOTE="+root {
				pids = append(pids, filepath.Base(d))
			}
		}
	}
	return pids
}

// gone waits up to two seconds for every nix-store on root to exit.
func gone(t *testing.T, root string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		left := nixStoresOf(root)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nix-store processes left: %v", left)
		}
	}
}

// nixstore.Store.Dump: one nix-store --serve, started before it is told what to
// dump, gives the NARs asked for back to back, each what the store's
// database says; a path it cannot dump is its error; Close stops it at any
// point and leaves no process behind.
func TestNixStoreDump(t *testing.T) {
	s := newTestStore(t)
	c := addClosure(t, s, 3<<20)
	st := &nixstore.Store{Env: s.env}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	infos := s.infos(t, c.all()...)
	session := func(t *testing.T) *nixstore.Session {
		t.Helper()
		d, err := st.Dump(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	t.Run("back to back", func(t *testing.T) {
		d := session(t)
		order := []string{c.top, c.leaf, c.mid, c.leaf}
		d.Request(order)
		for _, p := range order {
			nar := make([]byte, infos[p].NARSize)
			if _, err := io.ReadFull(d, nar); err != nil {
				t.Fatalf("reading the NAR of %s: %v", p, err)
			}
			if sha256.Sum256(nar) != infos[p].NARHash {
				t.Errorf("the NAR of %s is not the one the database describes", p)
			}
		}
		if n, err := d.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Errorf("after the last NAR: %d, %v; want the end", n, err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("Close = %v", err)
		}
		gone(t, s.root)
	})

	// Before the NARs, the same process answers what nix-store --query
	// does.
	t.Run("queries first", func(t *testing.T) {
		d := session(t)
		defer d.Close()
		closure, err := d.Closure([]string{c.top})
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Fields(s.nixStore(t, nil, "--query", "--requisites", c.top))
		slices.Sort(closure)
		slices.Sort(want)
		if !slices.Equal(closure, want) {
			t.Errorf("Closure = %v; nix-store -qR says %v", closure, want)
		}
		got, err := d.Info(closure)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range closure {
			g, w := got[p], infos[p]
			slices.Sort(g.References)
			slices.Sort(w.References)
			if g.NARHash != w.NARHash || g.NARSize != w.NARSize || g.Deriver != w.Deriver || !slices.Equal(g.References, w.References) {
				t.Errorf("Info(%s) = %+v; nix-store --query says %+v", p, g, w)
			}
		}
		missing := nixstore.Dir + "/" + storeName("nbship-missing")
		if _, err := d.Info([]string{c.leaf, missing}); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("Info of a path the store lacks: %v; want an error naming it", err)
		}
		d2 := session(t)
		if _, err := d2.Closure([]string{missing}); err == nil || !strings.Contains(err.Error(), "not valid") {
			t.Errorf("Closure of a path the store lacks: %v; want nix-store's error", err)
		}
		d2.Close()
		// And then the NARs.
		d.Request([]string{c.mid})
		nar := make([]byte, infos[c.mid].NARSize)
		if _, err := io.ReadFull(d, nar); err != nil || sha256.Sum256(nar) != infos[c.mid].NARHash {
			t.Errorf("the NAR of mid after the queries: %v", err)
		}
	})

	t.Run("invalid path", func(t *testing.T) {
		d := session(t)
		missing := nixstore.Dir + "/" + storeName("nbship-missing")
		d.Request([]string{c.top, missing, c.leaf})
		if _, err := io.ReadFull(d, make([]byte, infos[c.top].NARSize)); err != nil {
			t.Fatalf("reading the NAR of top: %v", err)
		}
		_, err := io.ReadAll(d)
		if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "not valid") {
			t.Errorf("reading past an invalid path: %v; want nix-store's error naming it", err)
		}
		d.Close()
		gone(t, s.root)
	})

	t.Run("never asked", func(t *testing.T) {
		d := session(t)
		if err := d.Close(); err != nil {
			t.Errorf("Close of a dump never asked for anything = %v", err)
		}
		gone(t, s.root)
	})

	t.Run("closed mid-NAR", func(t *testing.T) {
		d := session(t)
		d.Request([]string{c.leaf, c.leaf, c.leaf})
		if _, err := io.ReadFull(d, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		// nix-store is blocked writing the rest; a Read blocked on it
		// returns once it is stopped.
		read := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, d)
			read <- err
		}()
		done := make(chan struct{})
		go func() { d.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return")
		}
		select {
		case <-read:
		case <-time.After(5 * time.Second):
			t.Fatal("a Read blocked on the dump did not return after Close")
		}
		gone(t, s.root)
	})
}

// infos is what nix-store --query says of paths: their NAR's hash and
// size, references and deriver.
func (s *testStore) infos(t *testing.T, paths ...string) map[string]*nixstore.PathInfo {
	t.Helper()
	infos := map[string]*nixstore.PathInfo{}
	for _, p := range paths {
		q := func(what string) string { return strings.TrimSpace(s.nixStore(t, nil, "--query", what, p)) }
		info := &nixstore.PathInfo{Path: p, References: strings.Fields(q("--references"))}
		var err error
		if info.NARHash, err = nixstore.ParseNARHash(q("--hash")); err != nil {
			t.Fatal(err)
		}
		if info.NARSize, err = strconv.ParseInt(q("--size"), 10, 64); err != nil {
			t.Fatal(err)
		}
		if info.Deriver = q("--deriver"); info.Deriver == "unknown-deriver" {
			info.Deriver = ""
		}
		infos[p] = info
	}
	return infos
}
