package hetzner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/nbship/nbship/internal/cloudapi"
)

// transport retries a request the API answered with 429 Too Many
// Requests: a refused request did nothing, so even a POST may be sent
// again. It waits what Retry-After asks (1s, 2s, … without one); a wait
// longer than maxWait ends the retries. Other answers, 5xx included, are
// handed on as they are: they become errors.
type transport struct {
	base    http.RoundTripper
	tries   int
	maxWait time.Duration
	sleep   func(context.Context, time.Duration) error

	mu   sync.Mutex
	last result // of the latest request
}

type result struct {
	method, path string
	status       int
	tries        int
	asked        time.Duration // a Retry-After not obeyed
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	rewindable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	for try := 1; ; try++ {
		r := req
		if try > 1 {
			r = req.Clone(req.Context())
			if req.GetBody != nil {
				body, err := req.GetBody()
				if err != nil {
					return nil, err
				}
				r.Body = body
			}
		}
		resp, err := t.base.RoundTrip(r)
		res := result{method: req.Method, path: req.URL.Path, tries: try}
		if resp != nil {
			res.status = resp.StatusCode
		}
		if err != nil || resp.StatusCode != http.StatusTooManyRequests || try >= t.tries || !rewindable {
			t.record(res)
			return resp, err
		}
		wait := RetryAfter(resp.Header.Get("Retry-After"), time.Now())
		if wait <= 0 {
			wait = time.Second << min(try-1, 6)
		}
		if wait > t.maxWait {
			res.asked = wait
			t.record(res)
			return resp, nil
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err := t.sleep(req.Context(), wait); err != nil {
			return nil, err
		}
	}
}

func (t *transport) record(r result) {
	t.mu.Lock()
	t.last = r
	t.mu.Unlock()
}

func (t *transport) latest() result {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// maxRetryAfter caps what RetryAfter returns: a day is "too long" for
// every caller, and the cap keeps the arithmetic far from overflow.
const maxRetryAfter = 24 * time.Hour

// RetryAfter reads a Retry-After header value, whole seconds or an HTTP
// date, as a wait from now. Absent, unreadable, past and negative values
// are 0; longer than a day is a day.
func RetryAfter(v string, now time.Time) time.Duration {
	return cloudapi.RetryAfter(v, now, maxRetryAfter)
}

func sleepCtx(ctx context.Context, d time.Duration) error { return cloudapi.Sleep(ctx, d) }

// ErrUnauthorized is the API refusing the token.
var ErrUnauthorized = errors.New("hetzner: the API refused the token (401); check HCLOUD_TOKEN")

// APIError is an error status from the API, after any retries.
type APIError struct {
	Method  string
	Path    string // like /servers/42
	Status  int
	Code    string // the API's error.code
	Message string // the API's error.message, token removed
	Tries   int
	Asked   time.Duration // a Retry-After longer than the client waits
}

func (e *APIError) Error() string {
	var b strings.Builder
	status := fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	switch {
	case e.Status == http.StatusTooManyRequests && e.Asked > 0:
		fmt.Fprintf(&b, "hetzner: the API is rate-limiting this token (%s) on %s %s and asks to wait %s; gave up after %s", status, e.Method, e.Path, e.Asked, tries(e.Tries))
	case e.Status == http.StatusTooManyRequests:
		fmt.Fprintf(&b, "hetzner: the API is rate-limiting this token (%s) on %s %s; gave up after %s", status, e.Method, e.Path, tries(e.Tries))
	case e.Status >= 500:
		fmt.Fprintf(&b, "hetzner: the API failed (%s) on %s %s", status, e.Method, e.Path)
	case e.Status == http.StatusForbidden:
		fmt.Fprintf(&b, "hetzner: the token may not do %s %s (%s); it needs read and write", e.Method, e.Path, status)
	default:
		fmt.Fprintf(&b, "hetzner: the API refused %s %s (%s)", e.Method, e.Path, status)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
		if e.Code != "" {
			fmt.Fprintf(&b, " (%s)", e.Code)
		}
	}
	return b.String()
}

func tries(n int) string {
	if n == 1 {
		return "1 try"
	}
	return fmt.Sprintf("%d tries", n)
}

// wrap turns what hcloud-go returned into a "hetzner: " error with the
// token removed from every word the API or the network gave.
func (c *Client) wrap(resp *hcloud.Response, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("hetzner: stopped: %w", contextErr(err))
	}
	last := c.tr.latest()
	status := last.status
	var he hcloud.Error
	isAPI := errors.As(err, &he)
	if isAPI && he.Response() != nil && he.Response().Response != nil {
		status = he.Response().StatusCode
	} else if resp != nil && resp.Response != nil {
		status = resp.StatusCode
	}
	if !isAPI && !errors.Is(err, hcloud.ErrStatusCode) {
		return fmt.Errorf("hetzner: %s", c.message(err.Error()))
	}
	if status == http.StatusUnauthorized || (isAPI && he.Code == hcloud.ErrorCodeUnauthorized) {
		return ErrUnauthorized
	}
	e := &APIError{Method: last.method, Path: strings.TrimPrefix(last.path, "/v1"), Status: status, Tries: last.tries, Asked: last.asked}
	if isAPI {
		e.Code = string(he.Code)
		e.Message = c.message(he.Message)
	}
	return e
}

func contextErr(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return context.DeadlineExceeded
	}
	return context.Canceled
}

// message makes a message from the API fit on the error's line.
func (c *Client) message(m string) string { return cloudapi.Message(m, c.token) }

func (c *Client) redact(s string) string { return cloudapi.Redact(s, c.token) }
