package transfer

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/nixstore"
)

// testKey is a Nix key pair made from a fixed seed.
func testKey(name string, seed byte) (*nixstore.SigningKey, string) {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub := name + ":" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	sk, err := nixstore.ParseSigningKey([]byte(name + ":" + base64.StdEncoding.EncodeToString(k) + "\n"))
	if err != nil {
		panic(err)
	}
	return sk, pub
}

func trustOf(pubs ...string) *nixstore.Trust {
	cfg, _ := json.Marshal(map[string]any{
		"require-sigs":        map[string]any{"value": true},
		"trusted-public-keys": map[string]any{"value": pubs},
		"trusted-users":       map[string]any{"value": []string{"root"}},
	})
	t, err := nixstore.ParseTrust(cfg, "netboot", nil, false)
	if err != nil || t == nil {
		panic(fmt.Sprint(t, err))
	}
	return t
}

// storeTripWith is storeTrip with the sink set up by opt first.
func storeTripWith(t *testing.T, src, dst *fakeStore, opt func(*StoreSink), sign *nixstore.SigningKey, paths ...string) (sink *StoreSink, sent, got *Stats, serr, rerr error) {
	t.Helper()
	ctx := context.Background()
	s, err := CollectStore(ctx, src, paths)
	if err != nil {
		t.Fatalf("CollectStore(%v): %v", paths, err)
	}
	if sign != nil {
		s.Sign(sign)
	}
	sink = NewStoreSink(dst)
	opt(sink)
	a, c := net.Pipe()
	sent, got, serr, rerr = pipeTrip(s, sink, zstdFastest, a, c, ReceiveOptions{Commit: func() (string, error) { return "", sink.Confirm(ctx) }})
	if cerr := sink.Close(); rerr == nil {
		rerr = cerr
	}
	return sink, sent, got, serr, rerr
}

func TestStoreTrust(t *testing.T) {
	key, pub := testKey("test-1", 1)
	other, _ := testKey("other-1", 2)
	_, pub2 := testKey("spare-1", 3)
	top := nixstore.Dir + "/" + topName
	for _, tc := range []struct {
		name   string
		trust  *nixstore.Trust
		sign   *nixstore.SigningKey
		prep   func(src *fakeStore) // before the trip
		refuse string               // "": imported
	}{
		{"untrusted user, unsigned", trustOf(pub, pub2), nil, nil,
			nixstore.Dir + "/" + leafName + " has no signature; this store requires of its (untrusted) receiving user a signature by test-1 or spare-1"},
		{"signed on the way", trustOf(pub), key, nil, ""},
		{"signed by an untrusted key", trustOf(pub), other, nil, "signatures by other-1, none of them good"},
		{"no trusted key at all", trustOf(), key, nil, "its trusted-public-keys is empty"},
		{"signed in the source store", trustOf(pub), nil, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				info, _ := src.Info(context.Background(), []string{nixstore.Dir + "/" + n})
				src.paths[n].sigs = []string{key.Sign(info[nixstore.Dir+"/"+n])}
			}
		}, ""},
		{"a signature of another path", trustOf(pub), nil, func(src *fakeStore) {
			info, _ := src.Info(context.Background(), []string{nixstore.Dir + "/" + midName})
			sig := key.Sign(info[nixstore.Dir+"/"+midName])
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].sigs = []string{sig}
			}
		}, nixstore.Dir + "/" + leafName + " has signatures by test-1, none of them good"},
		{"a content address its name was not made from", trustOf(pub), nil, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].ca = "fixed:r:sha256:" + strings.Repeat("0", 52)
			}
		}, nixstore.Dir + "/" + leafName + " has a content address that is not the one its name was made from"},
		{"a false content address, signed", trustOf(pub), key, func(src *fakeStore) {
			for _, n := range []string{leafName, midName, topName} {
				src.paths[n].ca = "text:sha256:" + strings.Repeat("0", 52)
			}
		}, ""},
		{"trusted user", nil, nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := threeLevels(), newFakeStore()
			if tc.prep != nil {
				tc.prep(src)
			}
			_, _, _, serr, rerr := storeTripWith(t, src, dst, func(s *StoreSink) { s.Trust = tc.trust }, tc.sign, top)
			if tc.refuse != "" {
				if rerr == nil || !strings.Contains(rerr.Error(), tc.refuse) || serr == nil {
					t.Fatalf("Receive = %v (sender: %v), want a refusal containing %q", rerr, serr, tc.refuse)
				}
				if strings.Contains(rerr.Error(), "\n") {
					t.Errorf("refusal %q is more than one line", rerr)
				}
				if len(dst.imported) != 0 || len(src.dumped) != 0 {
					t.Errorf("refused, but imported %v and dumped %v; want nothing moved", dst.imported, src.dumped)
				}
				return
			}
			if serr != nil || rerr != nil {
				t.Fatalf("trip: sender %v, receiver %v", serr, rerr)
			}
			if len(dst.imported) != 3 {
				t.Fatalf("imported %v, want 3 paths", dst.imported)
			}
			for _, n := range dst.imported {
				want := src.paths[n].sigs
				if tc.sign != nil {
					info, _ := src.Info(context.Background(), []string{nixstore.Dir + "/" + n})
					want = append(slices.Clone(want), tc.sign.Sign(info[nixstore.Dir+"/"+n]))
				}
				if got := dst.paths[n].sigs; !slices.Equal(got, want) {
					t.Errorf("%s arrived with signatures %v, want %v", n, got, want)
				}
				if got := dst.paths[n].ca; got != src.paths[n].ca {
					t.Errorf("%s arrived with content address %q, want %q", n, got, src.paths[n].ca)
				}
			}
		})
	}
}

func TestStoreSubstitute(t *testing.T) {
	top := nixstore.Dir + "/" + topName
	for _, tc := range []struct {
		name       string
		substitute bool
		cached     []string
		wantSent   int
		wantSubst  int
	}{
		{"half in the cache", true, []string{leafName}, 2, 1},
		{"all in the cache", true, []string{leafName, midName, topName}, 0, 3},
		{"cache empty", true, nil, 3, 0},
		{"not asked to", false, []string{leafName}, 3, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := threeLevels(), newFakeStore()
			dst.cache = map[string]*fakePath{}
			var bytes int64
			for _, n := range tc.cached {
				dst.cache[n] = src.paths[n]
				bytes += int64(len(src.paths[n].nar))
			}
			var notes []string
			sink, sent, _, serr, rerr := storeTripWith(t, src, dst, func(s *StoreSink) {
				s.Substitute = tc.substitute
				s.Notify = func(m string) { notes = append(notes, m) }
			}, nil, top)
			if serr != nil || rerr != nil {
				t.Fatalf("trip: sender %v, receiver %v", serr, rerr)
			}
			if sent.Sent != tc.wantSent || len(dst.substituted) != tc.wantSubst {
				t.Errorf("sent %d, substituted %v; want %d sent, %d substituted", sent.Sent, dst.substituted, tc.wantSent, tc.wantSubst)
			}
			if n, b := sink.Substituted(); n != tc.wantSubst || tc.substitute && b != bytes {
				t.Errorf("Substituted() = %d, %d; want %d, %d", n, b, tc.wantSubst, bytes)
			}
			if tc.substitute && (len(notes) != 1 || !strings.Contains(notes[0], fmt.Sprintf("%d of the 3 store paths", tc.wantSubst))) {
				t.Errorf("notes %q, want one line saying %d of the 3 paths came from the substituters", notes, tc.wantSubst)
			}
			for _, n := range []string{leafName, midName, topName} {
				if dst.paths[n] == nil {
					t.Errorf("%s is not in the store after the trip", n)
				}
			}
		})
	}
}

func TestExpectWant(t *testing.T) {
	msg := func(ty byte, p string) []byte {
		var b bytes.Buffer
		writeMsg(&b, ty, []byte(p))
		return b.Bytes()
	}
	cat := func(m ...[]byte) []byte { return bytes.Join(m, nil) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
		err  string
	}{
		{"want", msg(msgWant, "\x07"), "\x07", ""},
		{"busy first", cat(msg(msgBusy, ""), msg(msgBusy, ""), msg(msgWant, "\x01")), "\x01", ""},
		{"busy with a payload", cat(msg(msgBusy, "x"), msg(msgWant, "\x01")), "", "protocol error"},
		{"abort while busy", cat(msg(msgBusy, ""), msg(msgAbort, "no space")), "", "no space"},
		{"ends while busy", msg(msgBusy, ""), "", "truncated"},
		{"refused", cat(msg(msgBusy, ""), msg(msgAck, `{"ok":false,"error":"transfer: refused stream: unsigned"}`)), "", "the other end stopped: transfer: refused stream: unsigned"},
		{"acknowledged before the want", msg(msgAck, `{"ok":true}`), "", "protocol error"},
	} {
		got, err := expectWant(bytes.NewReader(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expectWant(%s) = %q, %v; want an error containing %q", tc.name, got, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("expectWant(%s) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

// busyWatch is the receiver's end of the connection: it closes seen once
// the receiver has written n busy messages.
type busyWatch struct {
	net.Conn
	n    int
	seen chan struct{}
}

func (b *busyWatch) Write(p []byte) (int, error) {
	if len(p) == 5 && p[0] == msgBusy && b.n > 0 {
		if b.n--; b.n == 0 {
			close(b.seen)
		}
	}
	return b.Conn.Write(p)
}

// slowSink is a StoreSink whose manifest check lasts until the receiver
// has said it is busy a few times (a store substituting for long).
type slowSink struct {
	*StoreSink
	seen chan struct{}
}

func (s *slowSink) CheckManifest(ctx context.Context, m *Manifest) error {
	<-s.seen
	return s.StoreSink.CheckManifest(ctx, m)
}

// TestBusyWhileChecking: while the receiver's store takes its time over
// the manifest, the receiver says it is busy, and the sender waits through
// those messages for the want, then sends.
func TestBusyWhileChecking(t *testing.T) {
	defer func(d time.Duration) { busyEvery = d }(busyEvery)
	busyEvery = time.Millisecond
	src, dst := threeLevels(), newFakeStore()
	s, err := CollectStore(context.Background(), src, []string{nixstore.Dir + "/" + topName})
	if err != nil {
		t.Fatal(err)
	}
	a, c := net.Pipe()
	w := &busyWatch{Conn: c, n: 3, seen: make(chan struct{})}
	sink := &slowSink{StoreSink: NewStoreSink(dst), seen: w.seen}
	sent, _, serr, rerr := pipeTrip(s, sink, zstdFastest, a, w, ReceiveOptions{})
	sink.Close()
	if serr != nil || rerr != nil || sent.Sent != 3 || len(dst.imported) != 3 {
		t.Fatalf("trip with a slow check: sender %v, receiver %v, %+v sent, %v imported; want all 3", serr, rerr, sent, dst.imported)
	}
}
