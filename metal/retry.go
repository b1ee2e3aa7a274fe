package metal

import (
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/nbship/nbship/internal/cloudapi"
)

// retryTransport retries what the API did not do: 429 and 503 for every
// method, and 500, 502, 504 and connection errors only for the methods that
// may safely run twice (a POST that failed half-way may have created a spot
// request). It waits Backoff, 2×Backoff, … (plus up to a quarter of jitter),
// or the response's Retry-After if that is longer; a Retry-After beyond
// maxWait ends the retries. The last response is handed on unchanged, so
// packngo decodes the API's error body as usual.
//
// One is made per Client call: packngo v0.31.0 takes no context, so the
// transport is where the caller's ctx reaches the requests and the waits.
type retryTransport struct {
	ctx     context.Context
	base    http.RoundTripper
	tries   int
	perTry  time.Duration
	backoff time.Duration
	maxWait time.Duration
	sleep   func(context.Context, time.Duration) error

	mu      sync.Mutex
	last    int           // tries used by the latest request
	refused time.Duration // a Retry-After longer than maxWait
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	rewindable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	t.mu.Lock()
	t.refused = 0
	t.mu.Unlock()
	for try := 1; ; try++ {
		// Each try has its own time limit, so the waits between tries do
		// not count against it; the limit ends when the body is closed.
		tctx, cancel := context.WithTimeout(t.ctx, t.perTry)
		r := req.Clone(tctx)
		if try > 1 && req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				cancel()
				return nil, err
			}
			r.Body = body
		}
		resp, err := t.base.RoundTrip(r)
		if err != nil {
			cancel()
		} else {
			resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
		}
		t.mu.Lock()
		t.last = try
		t.mu.Unlock()
		if try >= t.tries || !rewindable || t.ctx.Err() != nil || !shouldRetry(req.Method, resp, err) {
			return resp, err
		}
		var header http.Header
		if resp != nil {
			header = resp.Header
		}
		wait, ok := retryDelay(try, t.backoff, t.maxWait, header, time.Now())
		if !ok {
			t.mu.Lock()
			t.refused = retryAfter(header, time.Now())
			t.mu.Unlock()
			return resp, err
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		if err := t.sleep(t.ctx, wait); err != nil {
			return nil, err
		}
	}
}

// cancelBody ends a try's context when packngo is done with the body.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func (t *retryTransport) lastTries() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

func (t *retryTransport) refusedWait() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refused
}

// shouldRetry says whether a try's outcome is worth another try.
func shouldRetry(method string, resp *http.Response, err error) bool {
	idempotent := method == http.MethodGet || method == http.MethodHead ||
		method == http.MethodPut || method == http.MethodDelete || method == http.MethodOptions
	if err != nil {
		return idempotent
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		return true
	case http.StatusInternalServerError, http.StatusBadGateway, http.StatusGatewayTimeout:
		return idempotent
	}
	return false
}

// retryDelay is the wait after try (1 for the first): backoff doubled per
// try with up to 25% jitter, or Retry-After when that is longer. ok is
// false when the API asks for a wait longer than maxWait.
func retryDelay(try int, backoff, maxWait time.Duration, h http.Header, now time.Time) (wait time.Duration, ok bool) {
	wait = backoff << min(try-1, 16)
	wait += time.Duration(rand.Int64N(int64(wait)/4 + 1))
	if ra := retryAfter(h, now); ra > 0 {
		if ra > maxWait {
			return 0, false
		}
		wait = max(wait, ra)
	}
	return wait, true
}

// retryAfter reads Retry-After as seconds or as an HTTP date; 0 if absent
// or unreadable.
func retryAfter(h http.Header, now time.Time) time.Duration {
	return cloudapi.RetryAfter(h.Get("Retry-After"), now, 1<<30*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) error { return cloudapi.Sleep(ctx, d) }
