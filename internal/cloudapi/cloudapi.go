// Package cloudapi holds what nbship's clients of cloud APIs (Packet
// through packngo, Hetzner Cloud through hcloud-go) do alike: an API
// message made to fit one line with the token removed, the Retry-After
// header, a sleep that a context ends, and the reading of the token, retry
// and HTTP client options.
package cloudapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Token is the API token given (surrounding space removed), or an error
// prefixed with api ("packet") when there is none or it holds spaces or
// control characters. The error never shows the token: it must reach no
// output.
func Token(api, given string) (string, error) {
	token := strings.TrimSpace(given)
	if token == "" {
		return "", errors.New(api + ": no API token")
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return "", errors.New(api + ": the API token contains spaces or control characters")
	}
	return token, nil
}

// Redact removes secret from s ("" removes nothing).
func Redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[token]")
}

// Message makes one of an API's messages fit on an error's line: secret
// removed, control characters made spaces, at most 300 bytes.
func Message(m, secret string) string {
	m = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, Redact(m, secret))
	m = strings.TrimSpace(m)
	if len(m) > 300 {
		m = strings.ToValidUTF8(m[:300], "") + "…"
	}
	return m
}

// RetryAfter is how long a Retry-After value v (seconds, or an HTTP date)
// asks to wait from now, at most max; 0 for none or one that cannot be
// read.
func RetryAfter(v string, now time.Time, max time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) && strings.Trim(v, "0123456789") == "" {
				return max
			}
			return 0
		}
		if n > uint64(max/time.Second) {
			return max
		}
		return time.Duration(n) * time.Second
	}
	at, err := http.ParseTime(v)
	if err != nil || !at.After(now) {
		return 0
	}
	return min(at.Sub(now), max)
}

// Sleep waits d, or until ctx ends (its error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Tries is how many times a request is sent for a Retries option: 1+def
// for 0, once for a negative one, else 1+retries.
func Tries(retries, def int) int {
	switch {
	case retries < 0:
		return 1
	case retries > 0:
		return 1 + retries
	}
	return 1 + def
}

// HTTPClient is a copy of hc (nil: a zero Client) and the transport under
// it (http.DefaultTransport where it has none), for a client to wrap.
func HTTPClient(hc *http.Client) (http.Client, http.RoundTripper) {
	var c http.Client
	if hc != nil {
		c = *hc
	}
	if c.Transport == nil {
		return c, http.DefaultTransport
	}
	return c, c.Transport
}
