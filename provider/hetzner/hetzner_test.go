package hetzner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/provider"
	"github.com/nbship/nbship/provider/hetzner/hetznertest"
)

const token = "hc-Tok3nSECRET-9f8e7d"

// operatorKey is an authorized_keys line the tests create servers with.
const operatorKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl operator@laptop"

func newClient(t *testing.T, f *hetznertest.Fake) (*Client, *[]time.Duration) {
	t.Helper()
	c, err := New(Options{Token: token, Endpoint: f.APIURL(), PollInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	waits := &[]time.Duration{}
	c.tr.sleep = func(_ context.Context, d time.Duration) error {
		mu.Lock()
		*waits = append(*waits, d)
		mu.Unlock()
		return nil
	}
	return c, waits
}

func request() provider.CreateRequest {
	return provider.CreateRequest{Name: "builder-1", Type: "cax21", Location: "fsn1", SSHPublicKey: operatorKey}
}

func TestCreate(t *testing.T) {
	f := hetznertest.New(t, token)
	f.SetAddress("192.0.2.7")
	c, _ := newClient(t, f)
	var progress bytes.Buffer
	r := request()
	r.Progress = &progress
	s, err := c.Create(context.Background(), r)
	if err != nil {
		t.Fatalf("Create = %v", err)
	}
	want := provider.Server{Provider: "hetzner", ID: s.ID, Name: "builder-1", Type: "cax21", Location: "fsn1", Arch: "aarch64",
		IPv4: "192.0.2.7", IPv6: "2001:db8:0:1::/64", Status: "running", Running: true, Created: s.Created, Hourly: 0.0124,
		Labels: []string{"nbship=builder"}}
	if g, _ := json.Marshal(s); string(g) != string(mustJSON(want)) {
		t.Errorf("Create = %s, want %s", g, mustJSON(want))
	}
	id, _ := strconv.ParseInt(s.ID, 10, 64)
	fs, ok := f.Get(id)
	if !ok || !fs.Rescue || fs.Status != "running" || fs.Started || fs.Labels["nbship"] != "builder" || fs.Image != "debian-12" {
		t.Errorf("the fake's server = %+v, %v; want running in rescue, made powered off, labelled, from debian-12", fs, ok)
	}
	keys := f.Keys()
	if len(keys) != 1 || keys[0].PublicKey != operatorKey || !slices.Equal(fs.SSHKeys, []int64{keys[0].ID}) {
		t.Errorf("keys = %+v, server keys %v; want the operator's key uploaded and given to the rescue system", keys, fs.SSHKeys)
	}

	// The order of the documented flow: powered off, rescue, power on.
	var order []string
	for _, p := range f.Paths() {
		if strings.HasPrefix(p, "POST ") {
			order = append(order, p)
		}
	}
	wantOrder := []string{"POST /ssh_keys", "POST /servers", "POST /servers/" + s.ID + "/actions/enable_rescue", "POST /servers/" + s.ID + "/actions/poweron"}
	if !slices.Equal(order, wantOrder) {
		t.Errorf("POSTs = %q, want %q", order, wantOrder)
	}
	for _, c := range f.Calls() {
		if c.Method == "POST" && c.Path == "/servers" {
			var body struct {
				Start  *bool             `json:"start_after_create"`
				Labels map[string]string `json:"labels"`
				Type   string            `json:"server_type"`
				Loc    string            `json:"location"`
			}
			json.Unmarshal(c.Body, &body)
			if body.Start == nil || *body.Start || body.Labels["nbship"] != "builder" || body.Type != "cax21" || body.Loc != "fsn1" {
				t.Errorf("POST /servers body = %s, want start_after_create false, the label, cax21 in fsn1", c.Body)
			}
		}
		if c.Method == "POST" && strings.HasSuffix(c.Path, "enable_rescue") && !strings.Contains(string(c.Body), `"type":"linux64"`) {
			t.Errorf("enable_rescue body = %s, want type linux64", c.Body)
		}
	}
	for _, line := range []string{"uploaded SSH key", "create_server 50%", "create_server done", "enable_rescue done", "powering on server", "start_server done"} {
		if !strings.Contains(progress.String(), line) {
			t.Errorf("progress = %q, want a line with %q", progress.String(), line)
		}
	}

	// A second builder finds the key by its fingerprint.
	r.Name = "builder-2"
	progress.Reset()
	if _, err := c.Create(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Keys()); n != 1 || !strings.Contains(progress.String(), "using SSH key") {
		t.Errorf("second Create: %d keys, progress %q; want the key found, not uploaded again", n, progress.String())
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func TestCreateFailedActionDeletesServer(t *testing.T) {
	for _, command := range []string{"create_server", "enable_rescue", "poweron"} {
		t.Run(command, func(t *testing.T) {
			f := hetznertest.New(t, token)
			c, _ := newClient(t, f)
			f.FailAction(command, "action_failed", "the host had a hiccup")
			_, err := c.Create(context.Background(), request())
			var ae *ActionError
			if !errors.As(err, &ae) {
				t.Fatalf("Create = %v, want an *ActionError", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "hetzner: action ") || !strings.Contains(msg, "failed: the host had a hiccup (action_failed)") ||
				!strings.Contains(msg, "deleted again") || strings.Contains(msg, "\n") {
				t.Errorf("Create = %q, want one line naming the action, its error and that the server was deleted", msg)
			}
			if ss := f.Servers(); len(ss) != 0 {
				t.Errorf("servers left after a failed create: %+v", ss)
			}
		})
	}
}

func TestCreateRefusals(t *testing.T) {
	f := hetznertest.New(t, token)
	c, _ := newClient(t, f)
	tests := []struct {
		name string
		edit func(*provider.CreateRequest)
		want string
	}{
		{"no name", func(r *provider.CreateRequest) { r.Name = "" }, "hetzner: no server name given"},
		{"bad name", func(r *provider.CreateRequest) { r.Name = "a b" }, `server name "a b" is not a host name`},
		{"bad key", func(r *provider.CreateRequest) { r.SSHPublicKey = "ssh-ed25519 nonsense" }, "not an authorized_keys line"},
		{"no type", func(r *provider.CreateRequest) { r.Type = "cx99" }, `hetzner: no server type "cx99"`},
		{"no location", func(r *provider.CreateRequest) { r.Location = "mars1" }, `hetzner: no location "mars1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request()
			tt.edit(&r)
			_, err := c.Create(context.Background(), r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Create = %v, want %q", err, tt.want)
			}
		})
	}
	for _, p := range f.Paths() {
		if strings.HasPrefix(p, "POST") {
			t.Errorf("a refused create sent %s", p)
		}
	}
}

func TestUnauthorizedAndRedaction(t *testing.T) {
	f := hetznertest.New(t, "the-right-token")
	f.EchoToken = true
	c, _ := newClient(t, f)
	_, err := c.List(context.Background())
	if err != ErrUnauthorized || err.Error() != "hetzner: the API refused the token (401); check HCLOUD_TOKEN" {
		t.Errorf("List with a wrong token = %v, want ErrUnauthorized", err)
	}

	// An error body that repeats the token loses it.
	f2 := hetznertest.New(t, token)
	c2, _ := newClient(t, f2)
	f2.Fail(hetznertest.Failure{Status: 422, Code: "invalid_input", Message: "token " + token + " may not\nlist servers"})
	_, err = c2.List(context.Background())
	if err == nil || strings.Contains(err.Error(), token) || !strings.Contains(err.Error(), "token [token] may not list servers") {
		t.Errorf("List = %v, want the API's message with the token replaced and on one line", err)
	}
	// So does a server error without JSON, and an action's error.
	f2.Fail(hetznertest.Failure{Status: 502, Raw: "bad gateway " + token})
	_, err = c2.Prices(context.Background(), provider.PriceQuery{})
	if err == nil || strings.Contains(err.Error(), token) || !strings.Contains(err.Error(), "hetzner: the API failed (502 Bad Gateway) on GET /pricing") {
		t.Errorf("Prices = %v, want the 502 said without the token", err)
	}
	f2.FailAction("enable_rescue", "failed", "rescue for "+token+" failed")
	_, err = c2.Create(context.Background(), request())
	if err == nil || strings.Contains(err.Error(), token) {
		t.Errorf("Create = %v, want the action's error without the token", err)
	}
}

func TestRateLimit(t *testing.T) {
	f := hetznertest.New(t, token)
	c, waits := newClient(t, f)
	f.Fail(hetznertest.Failure{Status: 429, Code: "rate_limit_exceeded", Message: "limit reached", RetryAfter: "7"})
	ps, err := c.Prices(context.Background(), provider.PriceQuery{Type: "cx22", Location: "nbg1"})
	if err != nil || len(ps) != 1 {
		t.Fatalf("Prices after one 429 = %v, %v; want the retry's answer", ps, err)
	}
	if !slices.Equal(*waits, []time.Duration{7 * time.Second}) {
		t.Errorf("waits = %v, want the 7s Retry-After asked for", *waits)
	}
	if n := len(f.Calls()); n != 3 {
		t.Errorf("%d requests, want 3 (429, its retry, server types)", n)
	}

	// A wait longer than MaxWait is not made.
	*waits = nil
	f.Fail(hetznertest.Failure{Status: 429, Code: "rate_limit_exceeded", Message: "limit reached", RetryAfter: "3600"})
	_, err = c.List(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Asked != time.Hour || len(*waits) != 0 ||
		!strings.Contains(err.Error(), "rate-limiting this token (429 Too Many Requests) on GET /servers and asks to wait 1h0m0s") {
		t.Errorf("List = %v (waits %v), want the hour asked for said, and no wait", err, *waits)
	}

	// Every try refused: it gives up after the retries.
	*waits = nil
	for range 4 {
		f.Fail(hetznertest.Failure{Status: 429, Code: "rate_limit_exceeded", Message: "limit reached"})
	}
	_, err = c.List(context.Background())
	if !errors.As(err, &ae) || ae.Tries != 4 || len(*waits) != 3 {
		t.Errorf("List = %v (waits %v), want 4 tries and 3 waits", err, *waits)
	}

	// A 5xx is an error at once.
	*waits = nil
	before := len(f.Calls())
	f.Fail(hetznertest.Failure{Status: 503, Code: "service_error", Message: "maintenance"})
	_, err = c.List(context.Background())
	if !errors.As(err, &ae) || ae.Status != 503 || len(f.Calls()) != before+1 ||
		err.Error() != "hetzner: the API failed (503 Service Unavailable) on GET /servers: maintenance (service_error)" {
		t.Errorf("List = %v, want the 503 as one error after one request", err)
	}
}

func TestOnlyOwnServers(t *testing.T) {
	f := hetznertest.New(t, token)
	c, _ := newClient(t, f)
	foreign := f.AddServer(hetznertest.Server{Name: "production-db", Status: "running", Type: "cx22", Location: "nbg1", IPv4: "192.0.2.1", Labels: map[string]string{"role": "db"}})
	s, err := c.Create(context.Background(), request())
	if err != nil {
		t.Fatal(err)
	}
	list, err := c.List(context.Background())
	if err != nil || len(list) != 1 || list[0].ID != s.ID || list[0].Currency != "EUR" {
		t.Errorf("List = %+v, %v; want only the builder, priced in EUR", list, err)
	}
	if sel := f.Calls()[len(f.Calls())-2].Query.Get("label_selector"); sel != "nbship=builder" {
		t.Errorf("List's label_selector = %q, want nbship=builder", sel)
	}
	fid := strconv.FormatInt(foreign, 10)
	var nf *NotFoundError
	if _, err := c.Get(context.Background(), fid); !errors.As(err, &nf) || !nf.Foreign {
		t.Errorf("Get(foreign) = %v, want a NotFoundError for a server nbship did not make", err)
	}
	if err := c.Delete(context.Background(), fid); err == nil || !strings.Contains(err.Error(), "was not made by nbship") {
		t.Errorf("Delete(foreign) = %v, want it refused", err)
	}
	if _, ok := f.Get(foreign); !ok {
		t.Fatal("the foreign server was deleted")
	}
	for _, id := range []string{"x", "-1", "999999"} {
		if _, err := c.Get(context.Background(), id); err == nil {
			t.Errorf("Get(%q) = nil error", id)
		}
	}
	if g, err := c.Get(context.Background(), s.ID); err != nil || g.Name != "builder-1" {
		t.Errorf("Get(%s) = %+v, %v", s.ID, g, err)
	}
	if err := c.Delete(context.Background(), s.ID); err != nil {
		t.Fatalf("Delete = %v", err)
	}
	if ss := f.Servers(); len(ss) != 1 || ss[0].ID != foreign {
		t.Errorf("servers after Delete = %+v, want only the foreign one", ss)
	}
}

func TestPrices(t *testing.T) {
	f := hetznertest.New(t, token)
	c, _ := newClient(t, f)
	tests := []struct {
		q    provider.PriceQuery
		want []string
	}{
		{provider.PriceQuery{}, []string{"cax21 fsn1", "cax21 hel1", "cax21 nbg1", "cx22 fsn1", "cx22 hel1", "cx22 nbg1"}},
		{provider.PriceQuery{Type: "cax21", Location: "hel1"}, []string{"cax21 hel1"}},
		{provider.PriceQuery{Location: "nbg1"}, []string{"cax21 nbg1", "cx22 nbg1"}},
		{provider.PriceQuery{Type: "nope"}, nil},
	}
	for _, tt := range tests {
		ps, err := c.Prices(context.Background(), tt.q)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Type+" "+p.Location)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Prices(%+v) = %q, want %q", tt.q, got, tt.want)
		}
	}
	ps, _ := c.Prices(context.Background(), provider.PriceQuery{Type: "cax21", Location: "fsn1"})
	want := provider.Price{Type: "cax21", Location: "fsn1", Arch: "aarch64", Hourly: 0.0124, Monthly: 7.7231, Currency: "EUR", Note: "gross"}
	if len(ps) != 1 || ps[0] != want {
		t.Errorf("Prices(cax21, fsn1) = %+v, want %+v", ps, want)
	}
}

func TestNewRefusals(t *testing.T) {
	for _, o := range []Options{
		{Token: ""},
		{Token: "a b"},
		{Token: "ok", Endpoint: "ftp://x"},
		{Token: "ok", Endpoint: "https://user:pw@api.example/v1"},
	} {
		if _, err := New(o); err == nil || !strings.HasPrefix(err.Error(), "hetzner: ") {
			t.Errorf("New(%+v) = %v, want a hetzner: error", o, err)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 12 ", 12 * time.Second},
		{"-3", 0},
		{"1.5", 0},
		{"99999999999999999999999", maxRetryAfter},
		{"86401", maxRetryAfter},
		{"Wed, 02 Dec 2026 10:00:30 GMT", 30 * time.Second},
		{"Wed, 02 Dec 2026 09:00:00 GMT", 0},
		{"Fri, 02 Dec 2050 10:00:30 GMT", maxRetryAfter},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := RetryAfter(tt.in, now); got != tt.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "7", "-1", "99999999999999999999", "Wed, 02 Dec 2026 10:00:30 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d := RetryAfter(s, now)
		if d < 0 || d > maxRetryAfter {
			t.Errorf("RetryAfter(%q) = %v, want 0 to %v", s, d, maxRetryAfter)
		}
		digits := strings.TrimSpace(s)
		if n, err := strconv.Atoi(digits); err == nil && digits != "" && strings.Trim(digits, "0123456789") == "" && n < 86400 && d != time.Duration(n)*time.Second {
			t.Errorf("RetryAfter(%q) = %v, want %ds", s, d, n)
		}
	})
}

// The fake is checked against hcloud-go in roundtrip_test.go.
var _ http.RoundTripper = (*transport)(nil)

// cancelOn cancels a context when a line containing want is written.
type cancelOn struct {
	want   string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	if strings.Contains(string(p), c.want) {
		c.cancel()
	}
	return len(p), nil
}

// TestCreateInterruptedDeletesServer: an interrupt (ctx cancelled) after
// the server exists still deletes it, so nothing is left billing.
func TestCreateInterruptedDeletesServer(t *testing.T) {
	f := hetznertest.New(t, token)
	c, _ := newClient(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := request()
	r.Progress = &cancelOn{want: "enable_rescue 50%", cancel: cancel}
	_, err := c.Create(ctx, r)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "deleted again") {
		t.Errorf("Create(cancelled) = %v, want context.Canceled and the server deleted", err)
	}
	if ss := f.Servers(); len(ss) != 0 {
		t.Errorf("servers left after an interrupted create: %+v", ss)
	}
}
