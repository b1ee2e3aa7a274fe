package cloudapi

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"5", 5 * time.Second},
		{" 7 ", 7 * time.Second},
		{"-1", 0},
		{"junk", 0},
		{"99999999999999999999", time.Minute},
		{"3600", time.Minute},
		{"Wed, 01 May 2024 10:00:30 GMT", 30 * time.Second},
		{"Wed, 01 May 2024 09:00:00 GMT", 0},
	} {
		if got := RetryAfter(tc.v, now, time.Minute); got != tc.want {
			t.Errorf("RetryAfter(%q) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "5", "-1", "junk", "99999999999999999999", "Wed, 01 May 2024 10:00:30 GMT"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if d := RetryAfter(v, now, time.Minute); d < 0 || d > time.Minute {
			t.Errorf("RetryAfter(%q) = %v, want 0..1m", v, d)
		}
	})
}

func TestMessage(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"bad token s3cret here", "bad token [token] here"},
		{"line\none\ttwo\r\n", "line one two"},
		{strings.Repeat("x", 400), strings.Repeat("x", 300) + "…"},
	} {
		if got := Message(tc.in, "s3cret"); got != tc.want {
			t.Errorf("Message(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := Redact("a s3cret", ""); got != "a s3cret" {
		t.Errorf("Redact with no secret = %q", got)
	}
}

func TestTries(t *testing.T) {
	for _, tc := range []struct{ retries, want int }{{0, 4}, {-1, 1}, {-5, 1}, {1, 2}, {7, 8}} {
		if got := Tries(tc.retries, 3); got != tc.want {
			t.Errorf("Tries(%d, 3) = %d, want %d", tc.retries, got, tc.want)
		}
	}
}

func TestHTTPClient(t *testing.T) {
	if c, base := HTTPClient(nil); c.Transport != nil || c.Timeout != 0 || base != http.DefaultTransport {
		t.Errorf("HTTPClient(nil) = %+v, %v, want a zero Client over http.DefaultTransport", c, base)
	}
	own := &http.Transport{}
	in := &http.Client{Transport: own, Timeout: time.Second}
	c, base := HTTPClient(in)
	if c.Timeout != time.Second || base != own {
		t.Errorf("HTTPClient(%+v) = %+v, %v, want a copy over its own transport", in, c, base)
	}
	c.Timeout = 0
	if in.Timeout != time.Second {
		t.Errorf("HTTPClient changed the caller's Client")
	}
}

func TestToken(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{" tok-1\n", "tok-1", ""},
		{"", "", "packet: no API token"},
		{" \t", "", "packet: no API token"},
		{"tok en", "", "packet: the API token contains spaces or control characters"},
		{"tok\x7f", "", "packet: the API token contains spaces or control characters"},
	} {
		got, err := Token("packet", tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || err != nil && err.Error() != tc.err {
			t.Errorf("Token(%q) = %q, %v, want %q, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}
