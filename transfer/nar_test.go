package transfer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/nixstore"
)

// Store path names for the tests: leaf <- mid <- top, and a .drv.
const (
	leafName = "0c2hk5ynqmw0b6g9nqwxbwn2rgvhd6m4-leaf"
	midName  = "1dlqm4z1xv5yc0m2mbhy0gblp2wbwra8-mid"
	topName  = "2dm3ab6xr8gn3bs6rnx4gfz1i0dbws75-top"
	drvName  = "3xlk6vfqv9c1xx59k0g9jxgf9ryr4h4m-top.drv"
	nowhere  = "4l7p0sdzbqcfl8plvpfsl6vpf0w5mwvh-nowhere"
)

// fakeNAR is a stand-in NAR that says its own length, so that the fake
// importer can find where it ends as Nix finds the end of a real one.
func fakeNAR(content string) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(content)))
	return append(b, content...)
}

type fakePath struct {
	nar     []byte
	refs    []string // base names
	deriver string
	sigs    []string
	ca      string
}

// fakeStore is a Nix store in memory, both ends' kind.
type fakeStore struct {
	mu          sync.Mutex
	paths       map[string]*fakePath // base name -> path, valid paths only
	dumps       map[string][]byte    // what Dump gives instead of the NAR (corruption)
	imported    []string             // base names, in import order
	asked       [][]string           // the paths of each Invalid call; nil: a query through the import
	dumped      [][]string           // the paths of each Dump call
	cache       map[string]*fakePath // what its substituters have, by base name
	substituted []string             // base names taken from cache
	dumpRate    float64              // bytes a second Dump gives (0: as fast as read)
}

func newFakeStore() *fakeStore {
	return &fakeStore{paths: map[string]*fakePath{}, dumps: map[string][]byte{}}
}

func (f *fakeStore) add(name, content string, refs []string, deriver string) {
	f.paths[name] = &fakePath{nar: fakeNAR(content), refs: refs, deriver: deriver}
}

func (f *fakeStore) Closure(ctx context.Context, paths []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var walk func(p string) error
	walk = func(p string) error {
		if seen[p] {
			return nil
		}
		seen[p] = true
		b, _ := nixstore.Base(p)
		fp := f.paths[b]
		if fp == nil {
			return fmt.Errorf("path '%s' is not valid", p)
		}
		for _, r := range fp.refs {
			if err := walk(nixstore.Dir + "/" + r); err != nil {
				return err
			}
		}
		out = append(out, p)
		return nil
	}
	for _, p := range paths {
		if err := walk(p); err != nil {
			return nil, err
		}
	}
	slices.Reverse(out) // as a worst case: dependents first
	return out, nil
}

func (f *fakeStore) Info(ctx context.Context, paths []string) (map[string]*nixstore.PathInfo, error) {
	infos := map[string]*nixstore.PathInfo{}
	for _, p := range paths {
		b, _ := nixstore.Base(p)
		fp := f.paths[b]
		info := &nixstore.PathInfo{Path: p, NARSize: int64(len(fp.nar)), NARHash: sha256Sum(fp.nar)}
		for _, r := range fp.refs {
			info.References = append(info.References, nixstore.Dir+"/"+r)
		}
		if fp.deriver != "" {
			info.Deriver = nixstore.Dir + "/" + fp.deriver
		}
		info.Sigs, info.CA = fp.sigs, fp.ca
		infos[p] = info
	}
	return infos, nil
}

func (f *fakeStore) Dump(ctx context.Context) (NARDump, error) {
	return &fakeDump{f: f}, nil
}

// fakeDump is a fakeStore's session: its queries, then the NARs asked
// for, back to back.
type fakeDump struct {
	f *fakeStore
	r io.Reader
}

func (d *fakeDump) Request(paths []string) {
	f := d.f
	f.mu.Lock()
	f.dumped = append(f.dumped, slices.Clone(paths))
	f.mu.Unlock()
	var all []byte
	for _, p := range paths {
		b, _ := nixstore.Base(p)
		if dd, ok := f.dumps[b]; ok {
			all = append(all, dd...)
		} else {
			all = append(all, f.paths[b].nar...)
		}
	}
	d.r = bytes.NewReader(all)
	if f.dumpRate > 0 {
		d.r = &slowReader{r: d.r, rate: f.dumpRate, start: time.Now()}
	}
}

// slowReader gives r's bytes no faster than rate bytes a second, as
// nix-store's dump of many small files does.
type slowReader struct {
	r     io.Reader
	rate  float64
	start time.Time
	n     int64
}

func (s *slowReader) Read(p []byte) (int, error) {
	p = p[:min(len(p), 64<<10)]
	n, err := s.r.Read(p)
	s.n += int64(n)
	if d := time.Duration(float64(s.n)/s.rate*float64(time.Second)) - time.Since(s.start); d > 0 {
		time.Sleep(d)
	}
	return n, err
}

func (d *fakeDump) Closure(paths []string) ([]string, error) {
	return d.f.Closure(context.Background(), paths)
}

func (d *fakeDump) Info(paths []string) (map[string]*nixstore.PathInfo, error) {
	return d.f.Info(context.Background(), paths)
}

func (d *fakeDump) Read(p []byte) (int, error) { return d.r.Read(p) }
func (d *fakeDump) Close() error               { return nil }

func (f *fakeStore) Invalid(ctx context.Context, paths []string) (map[string]bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, slices.Clone(paths))
	inv := map[string]bool{}
	for _, p := range paths {
		if b, _ := nixstore.Base(p); f.paths[b] == nil {
			inv[p] = true
		}
	}
	return inv, nil
}

// Import speaks the serve protocol as nix-store --serve --write does: a
// path is added once its whole NAR has arrived and matched the narHash and
// narSize given with it; the first error ends it.
func (f *fakeStore) Import(ctx context.Context) (Importer, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	fi := &fakeImporter{in: inW, out: outR, done: make(chan error, 1)}
	go func() {
		err := f.serve(inR, outW)
		inR.CloseWithError(errors.New("nix-store exited"))
		outW.Close()
		fi.done <- err
	}()
	return fi, nil
}

// queryValid answers cmdQueryValidPaths as nix-store --serve does.
func (f *fakeStore) queryValid(num func() (uint64, error), str func() (string, error), w io.Writer) error {
	var lock, subst, n uint64
	for _, v := range []*uint64{&lock, &subst, &n} {
		var err error
		if *v, err = num(); err != nil {
			return err
		}
	}
	var valid []string
	for range n {
		p, err := str()
		if err != nil {
			return err
		}
		b, err := nixstore.Base(p)
		if err != nil {
			return fmt.Errorf("bad store path %q", p)
		}
		f.mu.Lock()
		if c := f.cache[b]; subst == 1 && f.paths[b] == nil && c != nil {
			f.paths[b] = c
			f.substituted = append(f.substituted, b)
		}
		if f.paths[b] != nil {
			valid = append(valid, p)
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	f.asked = append(f.asked, nil)
	f.mu.Unlock()
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(valid)))
	for _, p := range valid {
		b = appendStr(b, p)
	}
	_, err := w.Write(b)
	return err
}

func (f *fakeStore) serve(r io.Reader, w io.Writer) error {
	num := func() (uint64, error) {
		var b [8]byte
		_, err := io.ReadFull(r, b[:])
		return binary.LittleEndian.Uint64(b[:]), err
	}
	str := func() (string, error) {
		n, err := num()
		if err != nil || n > 4096 {
			return "", fmt.Errorf("bad string: %v", err)
		}
		b := make([]byte, (n+7)/8*8)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	}
	if m, err := num(); err != nil || m != serveMagic1 {
		return errors.New("protocol mismatch")
	}
	w.Write(binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, serveMagic2), 2<<8|7))
	if _, err := num(); err != nil {
		return err
	}
	for {
		cmd, err := num()
		if err != nil {
			return nil // end of input
		}
		if cmd == cmdQueryValidPaths {
			if err := f.queryValid(num, str, w); err != nil {
				return err
			}
			continue
		}
		if cmd != cmdAddToStoreNar {
			return fmt.Errorf("unknown serve command %d", cmd)
		}
		p, err := str()
		if err != nil {
			return err
		}
		drv, err := str()
		if err != nil {
			return err
		}
		hash, err := str()
		if err != nil {
			return err
		}
		nrefs, err := num()
		if err != nil {
			return err
		}
		var refs []string
		for range nrefs {
			s, err := str()
			if err != nil {
				return err
			}
			b, _ := nixstore.Base(s)
			refs = append(refs, b)
		}
		var regTime, narSize, ultimate, nsigs uint64
		for _, v := range []*uint64{&regTime, &narSize, &ultimate, &nsigs} {
			if *v, err = num(); err != nil {
				return err
			}
		}
		if nsigs > 64 {
			return fmt.Errorf("%d signatures", nsigs)
		}
		var sigs []string
		for range nsigs {
			sig, err := str()
			if err != nil {
				return err
			}
			sigs = append(sigs, sig)
		}
		ca, err := str()
		if err != nil {
			return fmt.Errorf("bad content address %q: %v", ca, err)
		}
		if narSize == 0 || narSize > 64<<20 {
			return fmt.Errorf("bad narSize %d", narSize)
		}
		nar := make([]byte, narSize)
		if _, err := io.ReadFull(r, nar); err != nil {
			return fmt.Errorf("unexpected end-of-file: %v", err)
		}
		if got := "sha256:" + sha(nar); got != hash {
			return fmt.Errorf("hash mismatch importing path '%s'; specified: %s, got: %s", p, hash, got)
		}
		b, err := nixstore.Base(p)
		if err != nil {
			return err
		}
		for _, ref := range refs {
			if _, ok := f.paths[ref]; !ok && ref != b {
				return fmt.Errorf("cannot add path '%s' because it references invalid path '%s'", p, ref)
			}
		}
		db, _ := nixstore.Base(drv)
		f.mu.Lock()
		f.paths[b] = &fakePath{nar: nar, refs: refs, deriver: db, sigs: sigs, ca: ca}
		f.imported = append(f.imported, b)
		f.mu.Unlock()
		if _, err := w.Write(binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
			return err
		}
	}
}

type fakeImporter struct {
	in   *io.PipeWriter
	out  *io.PipeReader
	done chan error
	err  error
	once sync.Once
}

func (fi *fakeImporter) Write(p []byte) (int, error) { return fi.in.Write(p) }
func (fi *fakeImporter) Read(p []byte) (int, error)  { return fi.out.Read(p) }
func (fi *fakeImporter) CloseWrite() error           { return fi.in.Close() }
func (fi *fakeImporter) Wait() error {
	fi.once.Do(func() { fi.err = <-fi.done })
	return fi.err
}
func (fi *fakeImporter) Kill() {
	fi.in.CloseWithError(errors.New("killed"))
	fi.out.CloseWithError(errors.New("killed"))
}

func sha256Sum(b []byte) [32]byte {
	var s [32]byte
	h, _ := hex.DecodeString(sha(b))
	copy(s[:], h)
	return s
}

func threeLevels() *fakeStore {
	src := newFakeStore()
	src.add(leafName, "leaf contents", nil, "")
	src.add(midName, "mid contents, including /nix/store/"+midName, []string{leafName, midName}, "")
	src.add(topName, "top", []string{midName, leafName}, drvName)
	return src
}

// storeTrip ships the closure of top from src into dst over an in-memory
// connection and returns both ends' results.
func storeTrip(t *testing.T, src, dst *fakeStore, paths ...string) (sent, got *Stats, serr, rerr error) {
	t.Helper()
	ctx := context.Background()
	s, err := CollectStore(ctx, src, paths)
	if err != nil {
		t.Fatalf("CollectStore(%v): %v", paths, err)
	}
	sink := NewStoreSink(dst)
	a, c := net.Pipe()
	sent, got, serr, rerr = pipeTrip(s, sink, zstdFastest, a, c, ReceiveOptions{Commit: func() (string, error) { return "", sink.Confirm(ctx) }})
	if cerr := sink.Close(); rerr == nil {
		rerr = cerr
	}
	return sent, got, serr, rerr
}

func TestStoreRoundTrip(t *testing.T) {
	src := threeLevels()
	dst := newFakeStore()
	sent, got, serr, rerr := storeTrip(t, src, dst, nixstore.Dir+"/"+topName)
	if serr != nil || rerr != nil {
		t.Fatalf("Send = %v, Receive = %v", serr, rerr)
	}
	if want := []string{leafName, midName, topName}; !slices.Equal(dst.imported, want) {
		t.Errorf("imported %v, want %v (dependencies first)", dst.imported, want)
	}
	if sent.Sent != 3 || got.Sent != 3 || sent.Files != 3 {
		t.Errorf("sent %d of %d (receiver %d), want 3 of 3", sent.Sent, sent.Files, got.Sent)
	}
	for n, p := range src.paths {
		q := dst.paths[n]
		if q == nil || !bytes.Equal(q.nar, p.nar) || !slices.Equal(sortedCopy(q.refs), sortedCopy(p.refs)) || q.deriver != p.deriver {
			t.Errorf("%s arrived as %+v, want %+v", n, q, p)
		}
	}

	// The import was confirmed: the last question was about the three.
	if n := len(dst.asked); n != 2 || len(dst.asked[1]) != 3 {
		t.Errorf("the store was asked %v; want the manifest's paths, then the three imported", dst.asked)
	}

	// Again: the receiver has everything, nothing moves, and the store is
	// asked once (nothing imported, nothing to confirm).
	dst.imported, dst.asked = nil, nil
	sent, _, serr, rerr = storeTrip(t, src, dst, nixstore.Dir+"/"+topName)
	if serr != nil || rerr != nil {
		t.Fatalf("second Send = %v, Receive = %v", serr, rerr)
	}
	if sent.Sent != 0 || sent.Reused != 3 || sent.Bytes != 0 || len(dst.imported) != 0 {
		t.Errorf("second ship sent %d, skipped %d, %d bytes, imported %v; want nothing sent", sent.Sent, sent.Reused, sent.Bytes, dst.imported)
	}
	if len(dst.asked) != 1 {
		t.Errorf("a re-ship asked the store %d times (%v); want once", len(dst.asked), dst.asked)
	}

	// Half there: only the rest moves, and only the rest is confirmed.
	half := newFakeStore()
	half.add(leafName, "leaf contents", nil, "")
	sent, _, serr, rerr = storeTrip(t, src, half, nixstore.Dir+"/"+topName)
	if serr != nil || rerr != nil {
		t.Fatalf("half Send = %v, Receive = %v", serr, rerr)
	}
	if n := len(half.asked); n != 2 || !slices.Equal(half.asked[1], []string{nixstore.Dir + "/" + midName, nixstore.Dir + "/" + topName}) {
		t.Errorf("the store was asked %v; want the manifest's paths, then the two imported", half.asked)
	}
	if want := []string{midName, topName}; !slices.Equal(half.imported, want) || sent.Sent != 2 || sent.Reused != 1 {
		t.Errorf("half: imported %v, sent %d, skipped %d; want %v, 2, 1", half.imported, sent.Sent, sent.Reused, want)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func TestStoreSenderRefusesCorruptStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		path string // whose NAR the dump gets wrong
		dump []byte
		want string
		// fine: the NAR itself is right, only what follows it is not, so
		// the receiver may import it
		fine bool
	}{
		{"flipped byte", midName, fakeNAR("mid contents, including /nix/store/" + strings.Replace(midName, "1", "2", 1)), "SHA-256 is not the one in the store's database", false},
		{"shorter", midName, fakeNAR("mid"), "its NAR is 22 bytes, not the 79", false},
		{"longer", midName, fakeNAR("mid contents, including /nix/store/" + midName + "and more"), "SHA-256 is not the one", false},
		{"last shorter", topName, topNAR[:len(topNAR)-1], "not the", false},
		{"last longer", topName, append(slices.Clone(topNAR), 0), "goes on after its NAR", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := threeLevels()
			src.dumps[tc.path] = tc.dump
			dst := newFakeStore()
			_, _, serr, rerr := storeTrip(t, src, dst, nixstore.Dir+"/"+topName)
			if serr == nil || !strings.Contains(serr.Error(), tc.want) || !strings.Contains(serr.Error(), tc.path) {
				t.Errorf("Send = %v, want an error naming %s and containing %q", serr, tc.path, tc.want)
			}
			if rerr == nil {
				t.Errorf("Receive succeeded from a corrupt store")
			}
			if !tc.fine && (dst.paths[tc.path] != nil || dst.paths[topName] != nil) {
				t.Errorf("imported %v, want neither %s nor top", dst.imported, tc.path)
			}
			if len(src.dumped) != 1 {
				t.Errorf("the store was asked for NARs %d times (%v), want once", len(src.dumped), src.dumped)
			}
		})
	}
}

// narEntry is a manifest entry of a store path whose NAR is data.
func narEntry(name string, data []byte, refs []string, deriver string) string {
	e := map[string]any{"name": name, "type": "nar", "mode": 0, "size": len(data), "sha256": sha(data)}
	if refs != nil {
		e["references"] = refs
	}
	if deriver != "" {
		e["deriver"] = deriver
	}
	b, _ := json.Marshal(e)
	return string(b)
}

// withField adds a field to a JSON entry.
func withField(entry, k string, v any) string {
	var e map[string]any
	json.Unmarshal([]byte(entry), &e)
	e[k] = v
	b, _ := json.Marshal(e)
	return string(b)
}

// goodSig is a well-formed signature (of nothing in particular).
var goodSig = "k-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64))

func manySigs(n int) []string {
	var s []string
	for i := range n {
		s = append(s, fmt.Sprintf("k-%d:", i)+base64.StdEncoding.EncodeToString(make([]byte, 64)))
	}
	return s
}

var (
	leafNAR = fakeNAR("leaf")
	midNAR  = fakeNAR("mid")
	topNAR  = fakeNAR("top")
)

func narStream(entries []string, data ...[]byte) []byte {
	var total int64
	var all []byte
	for _, d := range data {
		total += int64(len(d))
		all = append(all, d...)
	}
	return rawStream(Version, storeManifest(total, entries...), all)
}

// hostileStore are streams a store receiver refuses; imported lists what
// it must have imported before refusing (the paths before the bad one).
var hostileStore = []struct {
	name     string
	stream   []byte
	want     string
	imported []string
}{
	{"not a store path name", narStream([]string{narEntry("leaf", leafNAR, nil, "")}, leafNAR), "not a store path name", nil},
	{"e in the hash", narStream([]string{narEntry("e"+leafName[1:], leafNAR, nil, "")}, leafNAR), "not a store path name", nil},
	{"name starts with a period", narStream([]string{narEntry(leafName[:33]+".x", leafNAR, nil, "")}, leafNAR), "not a store path name", nil},
	{"path in a name", narStream([]string{narEntry(leafName+"/bin", leafNAR, nil, "")}, leafNAR), "parent directory is not declared", nil},
	{"reference to an unknown path", narStream([]string{narEntry(midName, midNAR, []string{nowhere}, "")}, midNAR), "neither sent before it nor valid", nil},
	{"reference later in the stream", narStream([]string{narEntry(midName, midNAR, []string{leafName}, ""), narEntry(leafName, leafNAR, nil, "")}, midNAR, leafNAR), "comes later in the stream", nil},
	{"bad reference", narStream([]string{narEntry(midName, midNAR, []string{"../../etc"}, "")}, midNAR), "is not a store path name", nil},
	{"signature not NAME:BASE64", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "sigs", []string{"k-1"})}, leafNAR), "signature \"k-1\": not NAME:BASE64", nil},
	{"signature too short", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "sigs", []string{"k-1:AAAA"})}, leafNAR), "3 bytes after the name, want 64", nil},
	{"signature twice", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "sigs", []string{goodSig, goodSig})}, leafNAR), "listed twice", nil},
	{"too many signatures", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "sigs", manySigs(maxSigs+1))}, leafNAR), "65 signatures", nil},
	{"odd content address", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "ca", "sha256:abc")}, leafNAR), "is not text:... or fixed:...", nil},
	{"content address with a newline", narStream([]string{withField(narEntry(leafName, leafNAR, nil, ""), "ca", "text:a\nb")}, leafNAR), "is not text:... or fixed:...", nil},
	{"signatures on a file", rawStream(Version, manifest(1, `{"name":"f","type":"file","mode":420,"size":1,"sha256":"`+sha([]byte("x"))+`","sigs":["`+goodSig+`"]}`), []byte("x")), "signatures or a content address on an entry that is not a store path", nil},
	{"reference twice", narStream([]string{narEntry(leafName, leafNAR, nil, ""), narEntry(midName, midNAR, []string{leafName, leafName}, "")}, leafNAR, midNAR), "listed twice", nil},
	{"deriver not a drv", narStream([]string{narEntry(leafName, leafNAR, nil, midName)}, leafNAR), "deriver", nil},
	{"bad deriver", narStream([]string{narEntry(leafName, leafNAR, nil, "x.drv")}, leafNAR), "deriver", nil},
	{"mode on a store path", rawStream(Version, manifest(int64(len(leafNAR)), `{"name":"`+leafName+`","type":"nar","mode":493,"size":`+fmt.Sprint(len(leafNAR))+`,"sha256":"`+sha(leafNAR)+`"}`), leafNAR), "with a mode", nil},
	{"empty NAR", narStream([]string{narEntry(leafName, nil, nil, "")}), "out of range", nil},
	{"references on a file", rawStream(Version, manifest(1, `{"name":"f","type":"file","mode":420,"size":1,"sha256":"`+sha([]byte("x"))+`","references":["`+leafName+`"]}`), []byte("x")), "not a store path", nil},
	{"files to a store", rawStream(Version, manifest(1, file("f", []byte("x"))), []byte("x")), "sender sent files", nil},
	{"mixed", narStream([]string{narEntry(leafName, leafNAR, nil, ""), file("f", []byte("x"))}, leafNAR, []byte("x")), "mixes Nix store paths with files", nil},
	{"hash mismatch", rawStream(Version, storeManifest(int64(len(leafNAR)), narEntry(leafName, fakeNAR("lea!"), nil, "")), leafNAR), "/nix/store/" + leafName + ": the NAR's SHA-256", nil},
	{"hash mismatch on the second", narStream([]string{narEntry(leafName, leafNAR, nil, ""), narEntry(midName, fakeNAR("mi!"), []string{leafName}, ""), narEntry(topName, topNAR, []string{midName}, "")}, leafNAR, midNAR, topNAR), "/nix/store/" + midName + ": the NAR's SHA-256", []string{leafName}},
	{"truncated in the second", rawStream(Version, storeManifest(int64(len(leafNAR)+len(midNAR)), narEntry(leafName, leafNAR, nil, ""), narEntry(midName, midNAR, []string{leafName}, "")), append(slices.Clone(leafNAR), midNAR[:5]...)), "/nix/store/" + midName + ": data ended", []string{leafName}},
	{"copy from before the stream", payloadStream(Version, storeManifest(int64(len(leafNAR)), narEntry(leafName, leafNAR, nil, "")),
		append(append([]byte{10}, leafNAR[:10]...), byte(len(leafNAR)-10), 0x80, 0x40)), "corrupt stream", nil},
	{"more than announced", rawStream(Version, storeManifest(int64(len(leafNAR)), narEntry(leafName, leafNAR, nil, "")), append(slices.Clone(leafNAR), "more"...)), "more data than", []string{leafName}},
}

func TestStoreReceiveRefusesHostileStreams(t *testing.T) {
	for _, tc := range hostileStore {
		t.Run(tc.name, func(t *testing.T) {
			dst := newFakeStore()
			sink := NewStoreSink(dst)
			conn := &scripted{r: bytes.NewReader(tc.stream)}
			_, err := Receive(context.Background(), conn, sink, ReceiveOptions{Commit: func() (string, error) {
				t.Error("Commit called for a refused stream")
				return "", nil
			}})
			if cerr := sink.Close(); cerr != nil {
				t.Errorf("sink.Close() = %v", cerr)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Receive(%s) = %v, want error containing %q", tc.name, err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
			if !slices.Equal(dst.imported, tc.imported) {
				t.Errorf("imported %v, want %v", dst.imported, tc.imported)
			}
		})
	}
}

func TestDirSinkRefusesStorePaths(t *testing.T) {
	sink, err := NewDirSink(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	stream := narStream([]string{narEntry(leafName, leafNAR, nil, "")}, leafNAR)
	_, err = Receive(context.Background(), &scripted{r: bytes.NewReader(stream)}, sink, ReceiveOptions{})
	if err == nil || !strings.Contains(err.Error(), "recv --store") {
		t.Errorf("Receive(store paths into a directory) = %v, want a refusal pointing at recv --store", err)
	}
}

func TestCollectStoreRefusesNonStorePaths(t *testing.T) {
	for _, p := range []string{"/etc/passwd", "/nix/store/" + leafName + "/bin", "relative"} {
		if _, err := CollectStore(context.Background(), threeLevels(), []string{p}); err == nil || !strings.Contains(err.Error(), "not a store path") {
			t.Errorf("CollectStore(%q) = %v, want an error", p, err)
		}
	}
	if _, err := CollectStore(context.Background(), threeLevels(), []string{nixstore.Dir + "/" + nowhere}); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Errorf("CollectStore(missing path) = %v, want the store's error", err)
	}
}

func FuzzReceiveStore(f *testing.F) {
	for _, tc := range hostileStore {
		f.Add(tc.stream)
	}
	f.Add(narStream([]string{narEntry(leafName, leafNAR, nil, ""), narEntry(midName, midNAR, []string{leafName, midName}, ""), narEntry(topName, topNAR, []string{midName}, drvName)}, leafNAR, midNAR, topNAR))
	f.Add(narStream([]string{withField(withField(narEntry(leafName, leafNAR, nil, ""), "sigs", []string{goodSig}), "ca", "fixed:r:sha256:"+strings.Repeat("0", 52))}, leafNAR))
	f.Fuzz(func(t *testing.T, stream []byte) {
		dst := newFakeStore()
		sink := NewStoreSink(dst)
		st, err := Receive(context.Background(), &scripted{r: bytes.NewReader(stream)}, sink, ReceiveOptions{})
		if cerr := sink.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err == nil && st.Sent != len(dst.imported) {
			t.Fatalf("accepted stream: %d paths sent, %d imported", st.Sent, len(dst.imported))
		}
		for _, p := range dst.imported {
			if nixstore.CheckName(p) != nil {
				t.Fatalf("imported %q, not a store path name", p)
			}
		}
	})
}

// ackWatch is a scripted connection that notes what the store had imported
// when the receiver wrote its final word.
type ackWatch struct {
	scripted
	dst          *fakeStore
	importedThen []string
}

func (a *ackWatch) Write(p []byte) (int, error) {
	if len(p) > 0 && p[0] == msgAck {
		a.dst.mu.Lock()
		a.importedThen = slices.Clone(a.dst.imported)
		a.dst.mu.Unlock()
	}
	return a.scripted.Write(p)
}

// The paths before a bad one are in the store before the sender hears of
// the failure: once it has, the ends may be stopped at any moment.
func TestStoreSinkImportsBeforeTellingSender(t *testing.T) {
	stream := narStream([]string{narEntry(leafName, leafNAR, nil, ""), narEntry(midName, fakeNAR("mi!"), []string{leafName}, "")}, leafNAR, midNAR)
	dst := newFakeStore()
	sink := NewStoreSink(dst)
	defer sink.Close()
	conn := &ackWatch{scripted: scripted{r: bytes.NewReader(stream)}, dst: dst}
	if _, err := Receive(context.Background(), conn, sink, ReceiveOptions{}); err == nil {
		t.Fatal("Receive accepted a NAR whose hash does not match")
	}
	if want := []string{leafName}; !slices.Equal(conn.importedThen, want) {
		t.Errorf("imported when the sender was told: %v, want %v", conn.importedThen, want)
	}
}

// scriptedImporter is a nix-store --serve --write that answers with reply
// whatever it is asked.
type scriptedImporter struct {
	reply  io.Reader
	killed bool
}

func (s *scriptedImporter) Write(p []byte) (int, error) { return len(p), nil }
func (s *scriptedImporter) Read(p []byte) (int, error)  { return s.reply.Read(p) }
func (s *scriptedImporter) CloseWrite() error           { return nil }
func (s *scriptedImporter) Wait() error                 { return nil }
func (s *scriptedImporter) Kill()                       { s.killed = true }

// The store's answer to "which are valid" is believed only for the paths
// asked about, and no more of them than were asked.
func TestQueryInvalidRefusesOddReplies(t *testing.T) {
	asked := []string{nixstore.Dir + "/" + leafName, nixstore.Dir + "/" + midName}
	reply := func(paths ...string) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(paths)))
		for _, p := range paths {
			b = appendStr(b, p)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		reply []byte
		want  string // "": no error
	}{
		{"one valid", reply(asked[1]), ""},
		{"not asked", reply(nixstore.Dir + "/" + topName), "was not asked about"},
		{"too many", binary.LittleEndian.AppendUint64(nil, 3), "3 valid paths of the 2"},
		{"huge string", binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 1), 1<<40), "more than 4096"},
		{"cut short", reply(asked[1])[:12], "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imp := &scriptedImporter{reply: bytes.NewReader(tc.reply)}
			invalid, err := queryInvalid(imp, asked)
			if tc.want == "" {
				if err != nil || !invalid[asked[0]] || invalid[asked[1]] || len(invalid) != 1 {
					t.Errorf("queryInvalid = %v, %v; want only %s invalid", invalid, err, leafName)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("queryInvalid = %v, %v; want an error containing %q", invalid, err, tc.want)
			}
			if !imp.killed {
				t.Errorf("nix-store was not stopped after an odd reply")
			}
		})
	}
}

// The serve protocol's numbers, as the fake nix-store speaks it.
const (
	serveMagic1        = 0x390c9deb
	serveMagic2        = 0x5452eecb
	cmdQueryValidPaths = 1
	cmdAddToStoreNar   = 9
)

// appendStr appends a string as Nix serialises it: its length, its bytes,
// zeros up to a multiple of 8.
func appendStr(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}
