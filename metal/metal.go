// Package metal talks to the Packet (Equinix Metal) API through packngo:
// spot market requests and prices, devices and their tags, and the Nix
// machines file of the builders that are running.
//
// packngo is kept behind three small interfaces (requestsAPI, pricesAPI,
// devicesAPI) holding only the methods used here. Every HTTP request packngo
// makes goes through a retrying transport (see retry.go): packngo v0.31.0
// has no retries of its own and takes no context, so a Client builds a
// packngo client per call whose transport carries that call's context.
package metal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nbship/nbship/internal/cloudapi"
	"github.com/packethost/packngo"
)

// DefaultAPIURL is the Equinix Metal API endpoint packngo uses by default.
const DefaultAPIURL = "https://api.equinix.com/metal/v1/"

// Defaults for Options.
const (
	DefaultRetries = 3               // retries after the first try: 4 tries in all
	DefaultBackoff = time.Second     // first wait; doubled for each retry
	DefaultMaxWait = 2 * time.Minute // longest Retry-After obeyed; a longer one ends the retries
	DefaultTimeout = time.Minute     // per try of an HTTP request
)

// Options configure a Client.
type Options struct {
	Token     string // API token (X-Auth-Token); never printed
	ProjectID string // project UUID; needed for listing and creating
	APIURL    string // base URL; DefaultAPIURL if empty; a trailing / is added

	// HTTPClient is copied and its Transport wrapped with the retry; nil
	// means http.DefaultTransport. Its Timeout, if any, bounds a whole
	// call, retries and waits included.
	HTTPClient *http.Client
	Timeout    time.Duration // per try; 0 means DefaultTimeout

	Retries   int           // retries after the first try on 429/5xx; 0 means DefaultRetries, negative means none
	Backoff   time.Duration // 0 means DefaultBackoff
	MaxWait   time.Duration // 0 means DefaultMaxWait
	UserAgent string        // put before packngo's own User-Agent
}

// Client is a Packet API client for one token and project.
type Client struct {
	token     string
	projectID string
	baseURL   string
	hc        http.Client
	base      http.RoundTripper
	tries     int
	perTry    time.Duration
	backoff   time.Duration
	maxWait   time.Duration
	userAgent string
	sleep     func(context.Context, time.Duration) error // tests replace it
}

// New checks opts and returns a Client. It makes no request.
func New(opts Options) (*Client, error) {
	token, err := cloudapi.Token("packet", opts.Token)
	if err != nil {
		return nil, err
	}
	base, err := NormalizeURL(opts.APIURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		token:     token,
		projectID: strings.TrimSpace(opts.ProjectID),
		baseURL:   base,
		tries:     cloudapi.Tries(opts.Retries, DefaultRetries),
		perTry:    opts.Timeout,
		backoff:   opts.Backoff,
		maxWait:   opts.MaxWait,
		userAgent: opts.UserAgent,
		sleep:     sleepCtx,
	}
	if c.backoff <= 0 {
		c.backoff = DefaultBackoff
	}
	if c.maxWait <= 0 {
		c.maxWait = DefaultMaxWait
	}
	if c.perTry <= 0 {
		c.perTry = DefaultTimeout
	}
	c.hc, c.base = cloudapi.HTTPClient(opts.HTTPClient)
	return c, nil
}

// NormalizeURL checks an API base URL and gives it the trailing slash
// packngo needs: without it "…/metal/v1" + "devices" resolves to
// "…/metal/devices".
func NormalizeURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return DefaultAPIURL, nil
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("packet: API URL %q is not an http(s) URL like %s", s, DefaultAPIURL)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("packet: API URL %q must not have user info, a query or a fragment", u.Redacted())
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
		u.RawPath = ""
	}
	return u.String(), nil
}

// The parts of packngo's services this package uses. *packngo.Client's
// SpotMarketRequests, SpotMarket and Devices fields satisfy them.
type requestsAPI interface {
	List(projectID string, opts *packngo.ListOptions) ([]packngo.SpotMarketRequest, *packngo.Response, error)
	Create(req *packngo.SpotMarketRequestCreateRequest, projectID string) (*packngo.SpotMarketRequest, *packngo.Response, error)
	Get(id string, opts *packngo.GetOptions) (*packngo.SpotMarketRequest, *packngo.Response, error)
	Delete(id string, force bool) (*packngo.Response, error)
}

type pricesAPI interface {
	PricesByFacility() (packngo.PriceMap, *packngo.Response, error)
	PricesByMetro() (packngo.PriceMap, *packngo.Response, error)
}

type devicesAPI interface {
	List(projectID string, opts *packngo.ListOptions) ([]packngo.Device, *packngo.Response, error)
	Get(id string, opts *packngo.GetOptions) (*packngo.Device, *packngo.Response, error)
	Update(id string, req *packngo.DeviceUpdateRequest) (*packngo.Device, *packngo.Response, error)
	Reboot(id string) (*packngo.Response, error)
}

type api struct {
	requests requestsAPI
	prices   pricesAPI
	devices  devicesAPI
}

// one makes the API call do, with the retries of call, and converts the
// object it answers with (requestFrom, deviceFrom).
func one[S, T any](ctx context.Context, c *Client, do func(api) (*S, *packngo.Response, error), from func(*S) T) (*T, error) {
	var out T
	err := c.call(ctx, func(a api) error {
		s, _, err := do(a)
		if err == nil {
			out = from(s)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// call runs f against a packngo client whose requests carry ctx and go
// through the retry, and turns packngo's errors into this package's.
func (c *Client) call(ctx context.Context, f func(api) error) error {
	rt := &retryTransport{
		ctx:     ctx,
		base:    c.base,
		tries:   c.tries,
		perTry:  c.perTry,
		backoff: c.backoff,
		maxWait: c.maxWait,
		sleep:   c.sleep,
	}
	hc := c.hc
	hc.Transport = rt
	pc, err := packngo.NewClient(
		packngo.WithAuth("nbship", c.token),
		packngo.WithHTTPClient(&hc),
		packngo.WithBaseURL(c.baseURL),
	)
	if err != nil {
		return fmt.Errorf("packet: %w", err)
	}
	if c.userAgent != "" {
		pc.UserAgent = c.userAgent + " " + pc.UserAgent
	}
	err = f(api{requests: pc.SpotMarketRequests, prices: pc.SpotMarket, devices: pc.Devices})
	if err == nil {
		return nil
	}
	return c.wrap(ctx, err, rt)
}

// wrap turns an error from packngo into an *APIError or a "packet: " error,
// with the token removed should anything have echoed it.
func (c *Client) wrap(ctx context.Context, err error, rt *retryTransport) error {
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("packet: %w", ctx.Err())
	}
	var er *packngo.ErrorResponse
	if errors.As(err, &er) && er.Response != nil {
		e := &APIError{
			Status:     er.Response.StatusCode,
			Tries:      rt.lastTries(),
			RetryAfter: rt.refusedWait(),
		}
		if req := er.Response.Request; req != nil {
			e.Method = req.Method
			e.Path = c.relPath(req.URL)
		}
		for _, m := range append(slices.Clone(er.Errors), er.SingleError) {
			if m = c.message(m); m != "" {
				e.Messages = append(e.Messages, m)
			}
		}
		return e
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	if errors.As(err, &se) || errors.As(err, &te) {
		return fmt.Errorf("packet: the API's answer is not the JSON expected: %s", c.redact(err.Error()))
	}
	if msg := c.redact(err.Error()); msg != err.Error() {
		err = errors.New(msg) // only the words survive, not the token
	}
	if n := rt.lastTries(); n > 1 {
		return fmt.Errorf("packet: gave up after %d tries: %w", n, err)
	}
	return fmt.Errorf("packet: %w", err)
}

// message makes one of the API's error messages fit on the error's line.
func (c *Client) message(m string) string { return cloudapi.Message(m, c.token) }

func (c *Client) redact(s string) string { return cloudapi.Redact(s, c.token) }

// relPath is u's path relative to the API base, for messages.
func (c *Client) relPath(u *url.URL) string {
	if u == nil {
		return ""
	}
	b, err := url.Parse(c.baseURL)
	if err == nil && strings.HasPrefix(u.Path, b.Path) {
		return strings.TrimPrefix(u.Path, b.Path)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// APIError is an error status from the API, after any retries.
type APIError struct {
	Method     string   // GET, POST, …
	Path       string   // relative to the API base, e.g. "devices/UUID"
	Status     int      // HTTP status
	Messages   []string // the API's {"errors": [...]}
	Tries      int      // requests made, retries included
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	var b strings.Builder
	status := fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	switch {
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		fmt.Fprintf(&b, "packet: token rejected (%s) on %s %s", status, e.Method, e.Path)
	case e.Status == http.StatusNotFound:
		fmt.Fprintf(&b, "packet: not found (%s): %s %s", status, e.Method, e.Path)
	case e.Status == http.StatusUnprocessableEntity:
		fmt.Fprintf(&b, "packet: the API refused %s %s (%s)", e.Method, e.Path, status)
	case e.RetryAfter > 0:
		fmt.Fprintf(&b, "packet: %s %s: %s after %s, and the API asks to wait %s more; gave up", e.Method, e.Path, status, triesText(e.Tries), e.RetryAfter)
	case e.Tries > 1:
		fmt.Fprintf(&b, "packet: %s %s: %s on all %d tries; gave up", e.Method, e.Path, status, e.Tries)
	default:
		fmt.Fprintf(&b, "packet: %s %s: %s", e.Method, e.Path, status)
	}
	if len(e.Messages) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(e.Messages, "; "))
	}
	return b.String()
}

func triesText(n int) string {
	if n == 1 {
		return "1 try"
	}
	return fmt.Sprintf("%d tries", n)
}

// Hint says what to do about e, for a second line under the error.
func (e *APIError) Hint() string {
	switch {
	case e.Status == http.StatusUnauthorized:
		return "check PACKET_AUTH_TOKEN (or packetKey in the --config file); if the API key was deleted, make a new one in the Equinix Metal console"
	case e.Status == http.StatusForbidden:
		return "the token is known but may not do this: check PACKET_PROJECT_ID (or packetProjectId) and that the API key is not read-only"
	case e.Status == http.StatusNotFound:
		return "check the ID (nbship spot list, nbship device list) and the project (PACKET_PROJECT_ID or packetProjectId)"
	case e.Status == http.StatusUnprocessableEntity:
		return "change the request as the API's message says; --dry-run on spot create shows what is sent"
	case e.Status == http.StatusTooManyRequests:
		return "the API is rate-limiting this token; wait a few minutes and run it again"
	case e.Status >= 500:
		return "the API is failing; run it again later"
	}
	return ""
}

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// checkUUID says clearly that what names a project, device or request is
// not a UUID, before packngo would.
func checkUUID(what, id string) error {
	if id == "" {
		return fmt.Errorf("packet: no %s ID given", what)
	}
	if !uuidRE.MatchString(id) {
		return fmt.Errorf("packet: %s ID %q is not a UUID (like 8c4d1a6e-2f0b-4c3e-9a57-0d1e2f3a4b5c)", what, id)
	}
	return nil
}

// ErrNoProject is returned by calls that need a project when none is set.
var ErrNoProject = errors.New("packet: no project ID")

func (c *Client) project() (string, error) {
	if c.projectID == "" {
		return "", ErrNoProject
	}
	if err := checkUUID("project", c.projectID); err != nil {
		return "", err
	}
	return c.projectID, nil
}

// idFromHref returns the last path element of an API link, the ID of what
// it links to when the API gave only the link.
func idFromHref(href string) string {
	if href == "" {
		return ""
	}
	return path.Base(href)
}
