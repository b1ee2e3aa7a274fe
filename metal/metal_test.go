package metal

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nbship/nbship/metal/metaltest"
)

const (
	testToken   = "tok-Zq8v3SECRETx7"
	testProject = "2f9c1d7a-5b3e-4c8d-9e0f-1a2b3c4d5e6f"
	devArm      = "d0000000-0000-4000-8000-000000000001"
	devX86      = "d0000000-0000-4000-8000-000000000002"
)

// newTestClient returns a client of a fresh fake API, with waits recorded
// instead of slept.
func newTestClient(t *testing.T) (*Client, *metaltest.Server, *[]time.Duration) {
	t.Helper()
	srv := metaltest.NewServer(t, testToken, testProject)
	srv.AddDevice(metaltest.Device{ID: devArm, Hostname: "arm1", State: "active", Plan: "c2.large.arm", Metro: "da", Facility: "dfw2", PublicIP: "147.75.1.1", Tags: []string{"hydra"}})
	srv.AddDevice(metaltest.Device{ID: devX86, Hostname: "x86a", State: "active", Plan: "m2.xlarge.x86", Metro: "da", Facility: "dfw2", PublicIP: "147.75.1.2", Tags: []string{"hydra", "big"}})
	c, err := New(Options{Token: testToken, ProjectID: testProject, APIURL: srv.APIURL()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	waits := &[]time.Duration{}
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		*waits = append(*waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return c, srv, waits
}

func TestAPIErrors(t *testing.T) {
	tests := []struct {
		name      string
		fail      []metaltest.Failure
		op        string // "get" (GET devices/ID) or "reboot" (POST)
		wantErr   string // "" for success
		wantCalls int
		status    int
		tries     int
	}{
		{"401", []metaltest.Failure{{Status: 401, Messages: []string{"Invalid authentication token"}}}, "get", "token rejected (401 Unauthorized) on GET devices/" + devArm + ": Invalid authentication token", 1, 401, 1},
		{"403", []metaltest.Failure{{Status: 403, Messages: []string{"You are not authorized to view this device"}}}, "get", "token rejected (403 Forbidden)", 1, 403, 1},
		{"404", []metaltest.Failure{{Status: 404, Messages: []string{"Not found"}}}, "get", "not found (404 Not Found): GET devices/" + devArm + ": Not found", 1, 404, 1},
		{"422 message shown", []metaltest.Failure{{Status: 422, Messages: []string{"Device is not in a state to reboot", "try later"}}}, "reboot", "the API refused POST devices/" + devArm + "/actions (422 Unprocessable Entity): Device is not in a state to reboot; try later", 1, 422, 1},
		{"429 then success", []metaltest.Failure{{Status: 429, Messages: []string{"Rate limit exceeded"}, RetryAfter: "0"}}, "get", "", 2, 0, 0},
		{"503 twice then success", []metaltest.Failure{{Status: 503}, {Status: 503}}, "get", "", 3, 0, 0},
		{"500 on every try", []metaltest.Failure{{Status: 500, Messages: []string{"boom"}}, {Status: 500, Messages: []string{"boom"}}, {Status: 500, Messages: []string{"boom"}}, {Status: 500, Messages: []string{"boom"}}}, "get", "packet: GET devices/" + devArm + ": 500 Internal Server Error on all 4 tries; gave up: boom", 4, 500, 4},
		{"500 on a POST is not retried", []metaltest.Failure{{Status: 500, Messages: []string{"boom"}}}, "reboot", "packet: POST devices/" + devArm + "/actions: 500 Internal Server Error: boom", 1, 500, 1},
		{"503 on a POST is retried", []metaltest.Failure{{Status: 503}}, "reboot", "", 2, 0, 0},
		{"429 asking for an hour", []metaltest.Failure{{Status: 429, Messages: []string{"slow down"}, RetryAfter: "3600"}}, "get", "429 Too Many Requests after 1 try, and the API asks to wait 1h0m0s more; gave up: slow down", 1, 429, 1},
		{"long message on one line", []metaltest.Failure{{Status: 422, Messages: []string{"line one\nline two\t" + strings.Repeat("x", 400)}}}, "get", "line one line two " + strings.Repeat("x", 282) + "…", 1, 422, 1},
		{"token echoed back is hidden", []metaltest.Failure{{Status: 422, Messages: []string{"bad token " + testToken}}}, "get", "bad token [token]", 1, 422, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, srv, _ := newTestClient(t)
			srv.Fail(tt.fail...)
			var err error
			switch tt.op {
			case "get":
				_, err = c.Device(context.Background(), devArm)
			case "reboot":
				err = c.Reboot(context.Background(), devArm)
			}
			if got := len(srv.Calls()); got != tt.wantCalls {
				t.Errorf("%s: requests = %d, want %d", tt.op, got, tt.wantCalls)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("%s = %v, want success", tt.op, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("%s = %v, want error containing %q", tt.op, err, tt.wantErr)
			}
			if strings.Contains(err.Error(), testToken) {
				t.Errorf("%s error %q contains the token", tt.op, err)
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("%s error %T, want *APIError", tt.op, err)
			}
			if ae.Status != tt.status || ae.Tries != tt.tries {
				t.Errorf("%s: status, tries = %d, %d, want %d, %d", tt.op, ae.Status, ae.Tries, tt.status, tt.tries)
			}
			if ae.Hint() == "" {
				t.Errorf("%s: APIError{%d}.Hint() is empty", tt.op, ae.Status)
			}
		})
	}
}

func TestRetryWaits(t *testing.T) {
	c, srv, waits := newTestClient(t)
	srv.Fail(metaltest.Failure{Status: 429, RetryAfter: "7"}, metaltest.Failure{Status: 502})
	if _, err := c.Device(context.Background(), devArm); err != nil {
		t.Fatalf("Device = %v, want success after retries", err)
	}
	if len(*waits) != 2 {
		t.Fatalf("waits = %v, want 2", *waits)
	}
	if w := (*waits)[0]; w < 7*time.Second {
		t.Errorf("wait after Retry-After: 7 = %v, want at least 7s", w)
	}
	if w := (*waits)[1]; w < 2*DefaultBackoff || w > 2*DefaultBackoff*5/4 {
		t.Errorf("second wait = %v, want %v plus up to 25%%", w, 2*DefaultBackoff)
	}
	for i, call := range srv.Calls() {
		if call.Token != testToken {
			t.Errorf("try %d: X-Auth-Token = %q, want the token", i+1, call.Token)
		}
	}
}

func TestRetryStopsOnCancel(t *testing.T) {
	c, srv, _ := newTestClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	c.sleep = func(ctx context.Context, d time.Duration) error { cancel(); return sleepCtx(ctx, d) }
	srv.Fail(metaltest.Failure{Status: 503}, metaltest.Failure{Status: 503})
	_, err := c.Device(ctx, devArm)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Device after cancel = %v, want context.Canceled", err)
	}
	if got := len(srv.Calls()); got != 1 {
		t.Errorf("requests = %d, want 1", got)
	}
}

func TestRetryDelay(t *testing.T) {
	now := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		try        int
		retryAfter string
		min, max   time.Duration
		ok         bool
	}{
		{1, "", 100 * time.Millisecond, 125 * time.Millisecond, true},
		{2, "", 200 * time.Millisecond, 250 * time.Millisecond, true},
		{3, "", 400 * time.Millisecond, 500 * time.Millisecond, true},
		{1, "0", 100 * time.Millisecond, 125 * time.Millisecond, true},
		{1, "5", 5 * time.Second, 5 * time.Second, true},
		{1, "junk", 100 * time.Millisecond, 125 * time.Millisecond, true},
		{1, now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, 30 * time.Second, true},
		{1, now.Add(-time.Hour).Format(http.TimeFormat), 100 * time.Millisecond, 125 * time.Millisecond, true},
		{1, "61", 0, 0, false},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.retryAfter != "" {
			h.Set("Retry-After", tt.retryAfter)
		}
		got, ok := retryDelay(tt.try, 100*time.Millisecond, time.Minute, h, now)
		if ok != tt.ok || got < tt.min || got > tt.max {
			t.Errorf("retryDelay(%d, Retry-After %q) = %v, %v, want %v..%v, %v", tt.try, tt.retryAfter, got, ok, tt.min, tt.max, tt.ok)
		}
	}
}

func TestNormalizeURL(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"", DefaultAPIURL, ""},
		{"https://api.equinix.com/metal/v1", "https://api.equinix.com/metal/v1/", ""},
		{"https://api.equinix.com/metal/v1/", "https://api.equinix.com/metal/v1/", ""},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080/", ""},
		{"api.equinix.com/metal/v1", "", "not an http(s) URL"},
		{"ftp://x/", "", "not an http(s) URL"},
		{"https://u:p@x/", "", "must not have user info"},
	}
	for _, tt := range tests {
		got, err := NormalizeURL(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("NormalizeURL(%q) = %q, %v, want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeURL(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		opts Options
		want string
	}{
		{Options{}, "no API token"},
		{Options{Token: "a b" + testToken}, "spaces or control characters"},
		{Options{Token: testToken, APIURL: "nope"}, "not an http(s) URL"},
	}
	for _, tt := range tests {
		_, err := New(tt.opts)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want error containing %q", tt.opts.APIURL, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), testToken) {
			t.Errorf("New error %q contains the token", err)
		}
	}
}

func TestUUIDsCheckedBeforeSending(t *testing.T) {
	c, srv, _ := newTestClient(t)
	ctx := context.Background()
	checks := []struct {
		name string
		err  error
	}{
		{"Device", func() error { _, err := c.Device(ctx, "arm1"); return err }()},
		{"Reboot", c.Reboot(ctx, "12345")},
		{"Request", func() error { _, err := c.Request(ctx, "not-a-uuid"); return err }()},
		{"Cancel", c.Cancel(ctx, "", true)},
	}
	for _, ch := range checks {
		if ch.err == nil || !strings.Contains(ch.err.Error(), "UUID") && !strings.Contains(ch.err.Error(), "no spot request ID") {
			t.Errorf("%s(bad ID) = %v, want a UUID error", ch.name, ch.err)
		}
	}
	c2, _ := New(Options{Token: testToken, ProjectID: "myproject", APIURL: srv.APIURL()})
	if _, err := c2.Devices(ctx, ""); err == nil || !strings.Contains(err.Error(), `project ID "myproject" is not a UUID`) {
		t.Errorf("Devices with project myproject = %v, want a UUID error", err)
	}
	c3, _ := New(Options{Token: testToken, APIURL: srv.APIURL()})
	if _, err := c3.Requests(ctx); !errors.Is(err, ErrNoProject) {
		t.Errorf("Requests without project = %v, want ErrNoProject", err)
	}
	if n := len(srv.Calls()); n != 0 {
		t.Errorf("requests sent = %d, want 0", n)
	}
}

func validRequest() CreateRequest {
	return CreateRequest{
		Plan: "c2.large.arm", Metro: "da", MaxBid: 0.5, Min: 1, Max: 3,
		Hostname: "arm-builder", IPXEURL: "http://netboot.example/hydra-c2.large.arm/netboot.ipxe",
		Tags: []string{"hydra", "hydra"},
	}
}

func TestCreateRequestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*CreateRequest)
		want string
	}{
		{"valid", func(*CreateRequest) {}, ""},
		{"no plan", func(r *CreateRequest) { r.Plan = "" }, "no plan"},
		{"bad plan", func(r *CreateRequest) { r.Plan = "C2 large" }, "not a plan slug"},
		{"no location", func(r *CreateRequest) { r.Metro = "" }, "no location"},
		{"both locations", func(r *CreateRequest) { r.Facilities = []string{"dfw2"} }, "not both"},
		{"zero bid", func(r *CreateRequest) { r.MaxBid = 0 }, "max bid"},
		{"bid rounds to zero", func(r *CreateRequest) { r.MaxBid = 0.004 }, "max bid"},
		{"min over max", func(r *CreateRequest) { r.Min = 4 }, "more than max"},
		{"zero max", func(r *CreateRequest) { r.Min, r.Max = 0, 0 }, "at least 1"},
		{"no hostname", func(r *CreateRequest) { r.Hostname = "" }, "no hostname"},
		{"bad hostname", func(r *CreateRequest) { r.Hostname = "arm_builder!" }, "not a valid host name"},
		{"no ipxe", func(r *CreateRequest) { r.IPXEURL = "" }, "no iPXE"},
		{"relative ipxe", func(r *CreateRequest) { r.IPXEURL = "netboot.ipxe" }, "not an http(s) URL"},
		{"empty tag", func(r *CreateRequest) { r.Tags = []string{""} }, "empty tag"},
	}
	for _, tt := range tests {
		r := validRequest()
		tt.edit(&r)
		err := r.Validate()
		if tt.want == "" {
			if err != nil {
				t.Errorf("Validate(%s) = %v, want nil", tt.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%s) = %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestCreateSendsBody(t *testing.T) {
	c, srv, _ := newTestClient(t)
	r := validRequest()
	r.MaxBid = 0.456
	r.AlwaysPXE = true
	got, err := c.Create(context.Background(), &r)
	if err != nil {
		t.Fatalf("Create = %v", err)
	}
	calls := srv.Calls()
	if len(calls) != 1 || calls[0].Method != "POST" || calls[0].Path != "projects/"+testProject+"/spot-market-requests" {
		t.Fatalf("calls = %+v, want one POST projects/ID/spot-market-requests", calls)
	}
	var body metaltest.CreateBody
	if err := json.Unmarshal(calls[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Min != 1 || body.Max != 3 || body.Metro != "da" || body.MaxBid != 0.46 ||
		body.P.OS != "custom_ipxe" || body.P.Plan != "c2.large.arm" || body.P.IPXE != r.IPXEURL ||
		!body.P.AlwaysPXE || !slices.Equal(body.P.Tags, []string{"hydra"}) || body.P.Hostname != "arm-builder" || body.P.Billing != "hourly" {
		t.Errorf("Create sent %s", calls[0].Body)
	}
	if got.ID == "" || got.Plan != "c2.large.arm" || got.Metro != "da" || got.Max != 3 {
		t.Errorf("Create = %+v, want the new request", got)
	}
	dry, err := r.Body()
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	json.Unmarshal(dry, &a)
	json.Unmarshal(calls[0].Body, &b)
	if ja, _ := json.Marshal(a); string(ja) != func() string { jb, _ := json.Marshal(b); return string(jb) }() {
		t.Errorf("Body() = %s, want what Create sent: %s", dry, calls[0].Body)
	}
}

func TestQuote(t *testing.T) {
	c, srv, _ := newTestClient(t)
	srv.SetPrice(false, "da", "c2.large.arm", 0.3)
	srv.SetPrice(false, "sv", "c2.large.arm", 0.2)
	srv.SetPrice(true, "dfw2", "c2.large.arm", 0.35)
	srv.SetPrice(true, "ewr1", "c2.large.arm", 0.25)
	tests := []struct {
		name           string
		edit           func(*CreateRequest)
		worst, current float64
		below          bool
		err            string
	}{
		{"metro", func(*CreateRequest) {}, 1.5, 0.9, false, ""},
		{"facilities", func(r *CreateRequest) { r.Metro = ""; r.Facilities = []string{"dfw2", "ewr1"} }, 1.5, 0.75, false, ""},
		{"bid below market", func(r *CreateRequest) { r.MaxBid = 0.1 }, 0.3, 0.9, true, ""},
		{"no price there", func(r *CreateRequest) { r.Metro = "am" }, 0, 0, false, "plan c2.large.arm has no spot price in am"},
	}
	for _, tt := range tests {
		r := validRequest()
		tt.edit(&r)
		q, err := c.Quote(context.Background(), &r)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Quote(%s) = %v, want error containing %q", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Quote(%s) = %v", tt.name, err)
		}
		if !near(q.Worst, tt.worst) || !near(q.Current, tt.current) || q.BelowMarket() != tt.below {
			t.Errorf("Quote(%s) = worst %v, current %v, below %v, want %v, %v, %v", tt.name, q.Worst, q.Current, q.BelowMarket(), tt.worst, tt.current, tt.below)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestTags(t *testing.T) {
	c, srv, _ := newTestClient(t)
	ctx := context.Background()
	steps := []struct {
		name    string
		do      func() (*Device, bool, error)
		changed bool
		want    []string
	}{
		{"drain", func() (*Device, bool, error) { return c.AddTag(ctx, devX86, DrainTag) }, true, []string{"hydra", "big", DrainTag}},
		{"drain again", func() (*Device, bool, error) { return c.AddTag(ctx, devX86, DrainTag) }, false, []string{"hydra", "big", DrainTag}},
		{"restore", func() (*Device, bool, error) { return c.RemoveTag(ctx, devX86, DrainTag) }, true, []string{"hydra", "big"}},
		{"restore again", func() (*Device, bool, error) { return c.RemoveTag(ctx, devX86, DrainTag) }, false, []string{"hydra", "big"}},
		{"remove the rest", func() (*Device, bool, error) {
			c.RemoveTag(ctx, devX86, "big")
			return c.RemoveTag(ctx, devX86, "hydra")
		}, true, []string{}},
	}
	for _, st := range steps {
		d, changed, err := st.do()
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if changed != st.changed || !slices.Equal(d.Tags, st.want) {
			t.Errorf("%s = %q, changed %v, want %q, %v", st.name, d.Tags, changed, st.want, st.changed)
		}
		if got := srv.Device(devX86).Tags; !slices.Equal(got, st.want) {
			t.Errorf("%s: server has tags %q, want %q", st.name, got, st.want)
		}
	}
	// The last PUT must send an empty list, not null.
	calls := srv.Calls()
	last := calls[len(calls)-1]
	if last.Method != "PUT" || strings.TrimSpace(string(last.Body)) != `{"tags":[]}` {
		t.Errorf("last call = %s %s %s, want PUT with {\"tags\":[]}", last.Method, last.Path, last.Body)
	}
}

func TestDevices(t *testing.T) {
	c, srv, _ := newTestClient(t)
	ds, err := c.Devices(context.Background(), "big")
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 || ds[0].ID != devX86 || ds[0].PublicIPv4 != "147.75.1.2" || ds[0].Plan != "m2.xlarge.x86" || ds[0].Metro != "da" || ds[0].Facility != "dfw2" {
		t.Errorf("Devices(big) = %+v, want x86a with its address, plan and location", ds)
	}
	call := srv.Calls()[0]
	if call.Method != "GET" || call.Path != "projects/"+testProject+"/devices" || call.Token != testToken {
		t.Errorf("Devices sent %s %s (token ok: %v)", call.Method, call.Path, call.Token == testToken)
	}
}

func TestTryTimeout(t *testing.T) {
	srv := metaltest.NewServer(t, testToken, testProject)
	srv.AddDevice(metaltest.Device{ID: devArm, Hostname: "arm1", State: "active", Plan: "c2.large.arm"})
	c, err := New(Options{Token: testToken, ProjectID: testProject, APIURL: srv.APIURL(), Timeout: 50 * time.Millisecond, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The first try hangs past its limit and is retried; the wait between
	// tries does not count against the second one.
	srv.Fail(metaltest.Failure{Hang: 5 * time.Second})
	d, err := c.Device(context.Background(), devArm)
	if err != nil || d.Hostname != "arm1" {
		t.Fatalf("Device after a hung try = %+v, %v, want arm1", d, err)
	}
	if n := len(srv.Calls()); n != 2 {
		t.Errorf("requests = %d, want 2", n)
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "5", "-1", "junk", "99999999999999999999", "Wed, 01 May 2024 10:00:30 GMT"} {
		f.Add(s)
	}
	now := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		h := http.Header{}
		h.Set("Retry-After", v)
		if d := retryAfter(h, now); d < 0 {
			t.Errorf("retryAfter(%q) = %v, want >= 0", v, d)
		}
		if d, ok := retryDelay(3, time.Second, time.Minute, h, now); ok && (d < 4*time.Second || d > time.Minute+5*time.Second) {
			t.Errorf("retryDelay(3, %q) = %v, want 4s..1m", v, d)
		}
	})
}
