// Package hetzner makes transient builders on Hetzner Cloud through
// hcloud-go: a server of the asked type and location, with the operator's
// SSH key, booted into the rescue system, from which the published image
// is kexec'd (see Ready). Every server it makes carries the label
// nbship=builder, and List, Get and Delete touch no other server.
//
// hcloud-go's own retries are off: they ignore Retry-After. A 429 is
// retried here instead (see transport.go), waiting as long as the API
// asks, up to Options.MaxWait.
package hetzner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"golang.org/x/crypto/ssh"

	"github.com/nbship/nbship/internal/cloudapi"
	"github.com/nbship/nbship/provider"
)

// Name is the provider's name on the command line.
const Name = "hetzner"

// The label every server nbship makes carries, and the selector that
// finds them.
const (
	LabelKey   = "nbship"
	LabelValue = "builder"
	selector   = LabelKey + "=" + LabelValue
)

// Defaults for Options.
const (
	DefaultImage        = "debian-12" // what the disk holds; the rescue system boots instead
	DefaultPollInterval = time.Second
	DefaultRetries      = 3
	DefaultMaxWait      = time.Minute
)

// Options configure a Client.
type Options struct {
	Token        string // API token; never printed
	Endpoint     string // "" = hcloud.Endpoint
	HTTPClient   *http.Client
	PollInterval time.Duration // between polls of a running action
	Retries      int           // retries of a 429; 0 = DefaultRetries, negative = none
	MaxWait      time.Duration // longest Retry-After obeyed; 0 = DefaultMaxWait
	Application  string        // put in the User-Agent, like nbship/1.2
}

// Client is one Hetzner Cloud project, reached with its token.
type Client struct {
	token string
	hc    *hcloud.Client
	tr    *transport
}

var _ provider.Provider = (*Client)(nil)

// New checks opts and returns a Client. It makes no request.
func New(opts Options) (*Client, error) {
	token, err := cloudapi.Token("hetzner", opts.Token)
	if err != nil {
		return nil, err
	}
	endpoint := hcloud.Endpoint
	if opts.Endpoint != "" {
		u, err := url.Parse(opts.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			return nil, fmt.Errorf("hetzner: API URL %q is not an http(s) URL like %s", opts.Endpoint, hcloud.Endpoint)
		}
		endpoint = opts.Endpoint
	}
	tr := &transport{tries: cloudapi.Tries(opts.Retries, DefaultRetries), maxWait: opts.MaxWait, sleep: sleepCtx}
	if tr.maxWait <= 0 {
		tr.maxWait = DefaultMaxWait
	}
	var hc http.Client
	hc, tr.base = cloudapi.HTTPClient(opts.HTTPClient)
	hc.Transport = tr
	poll := opts.PollInterval
	if poll <= 0 {
		poll = DefaultPollInterval
	}
	copts := []hcloud.ClientOption{
		hcloud.WithToken(token),
		hcloud.WithEndpoint(endpoint),
		hcloud.WithHTTPClient(&hc),
		hcloud.WithRetryOpts(hcloud.RetryOpts{MaxRetries: 0}),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(poll)}),
	}
	if opts.Application != "" {
		name, version, _ := strings.Cut(opts.Application, "/")
		copts = append(copts, hcloud.WithApplication(name, version))
	}
	return &Client{token: token, hc: hcloud.NewClient(copts...), tr: tr}, nil
}

// Name returns "hetzner".
func (c *Client) Name() string { return Name }

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// Check checks r before anything is sent.
func Check(r *provider.CreateRequest) error {
	switch {
	case r.Name == "":
		return errors.New("hetzner: no server name given")
	case !hostnameRE.MatchString(r.Name):
		return fmt.Errorf("hetzner: server name %q is not a host name (letters, digits and '-', at most 63)", r.Name)
	case r.Type == "":
		return errors.New("hetzner: no server type given (like cax21)")
	case r.Location == "":
		return errors.New("hetzner: no location given (like fsn1)")
	case r.SSHPublicKey == "":
		return errors.New("hetzner: no SSH public key: the rescue system lets in only that key")
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(r.SSHPublicKey)); err != nil {
		return fmt.Errorf("hetzner: the SSH public key is not an authorized_keys line: %v", err)
	}
	return nil
}

// Fingerprint is the MD5 fingerprint the API names an SSH key by.
func Fingerprint(authorizedKey string) (string, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey))
	if err != nil {
		return "", fmt.Errorf("hetzner: the SSH public key is not an authorized_keys line: %v", err)
	}
	return ssh.FingerprintLegacyMD5(k), nil
}

// Plan describes what Create does for r, for --dry-run.
type Plan struct {
	Provider string            `json:"provider"`
	Name     string            `json:"name"`
	Type     string            `json:"server_type"`
	Location string            `json:"location"`
	Image    string            `json:"image"`
	Labels   map[string]string `json:"labels"`
	SSHKey   string            `json:"ssh_key_fingerprint"`
	Rescue   string            `json:"rescue"`
	Steps    []string          `json:"steps"`
}

// DryRun returns what Create would do for r. It needs no token and sends
// nothing.
func DryRun(r provider.CreateRequest) (*Plan, error) {
	if err := Check(&r); err != nil {
		return nil, err
	}
	fp, err := Fingerprint(r.SSHPublicKey)
	if err != nil {
		return nil, err
	}
	image := r.Image
	if image == "" {
		image = DefaultImage
	}
	return &Plan{
		Provider: Name, Name: r.Name, Type: r.Type, Location: r.Location, Image: image,
		Labels: map[string]string{LabelKey: LabelValue}, SSHKey: fp, Rescue: string(hcloud.ServerRescueTypeLinux64),
		Steps: []string{
			"find the SSH key by its fingerprint, or upload it",
			"POST /servers (start_after_create false) and wait for its actions",
			"POST /servers/ID/actions/enable_rescue (linux64, the SSH key) and wait",
			"POST /servers/ID/actions/poweron and wait",
			"wait for SSH on the server's IPv4 and record its host key (trust on first use)",
			"kexec the published image",
		},
	}, nil
}

// Create makes a server of r.Type in r.Location from r.Image (DefaultImage
// if empty), with the key r.SSHPublicKey, labelled nbship=builder, and
// boots it into the rescue system: created powered off, rescue enabled,
// then powered on, so the first system it runs is the rescue one. A
// failure after the server exists deletes it again, so nothing is left
// billing.
func (c *Client) Create(ctx context.Context, r provider.CreateRequest) (*provider.Server, error) {
	if err := Check(&r); err != nil {
		return nil, err
	}
	log := r.Progress
	if log == nil {
		log = io.Discard
	}
	image := r.Image
	if image == "" {
		image = DefaultImage
	}
	st, resp, err := c.hc.ServerType.GetByName(ctx, r.Type)
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	if st == nil {
		return nil, &NotFoundError{What: "server type", Name: r.Type}
	}
	loc, resp, err := c.hc.Location.GetByName(ctx, r.Location)
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	if loc == nil {
		return nil, &NotFoundError{What: "location", Name: r.Location}
	}
	key, err := c.ensureKey(ctx, r.SSHPublicKey, log)
	if err != nil {
		return nil, err
	}

	fmt.Fprintf(log, "hetzner: creating server %s (%s in %s)\n", r.Name, st.Name, loc.Name)
	res, resp, err := c.hc.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name:             r.Name,
		ServerType:       &hcloud.ServerType{Name: st.Name},
		Image:            &hcloud.Image{Name: image},
		SSHKeys:          []*hcloud.SSHKey{key},
		Location:         &hcloud.Location{Name: loc.Name},
		StartAfterCreate: hcloud.Ptr(false),
		Labels:           map[string]string{LabelKey: LabelValue},
	})
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	srv := res.Server
	undo := func(err error) error {
		// The server bills from now on: take it away again.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if derr := c.delete(dctx, srv, io.Discard); derr != nil {
			return fmt.Errorf("%w; deleting server %d failed too (%v): delete it with 'nbship builders delete --provider hetzner %d'", err, srv.ID, derr, srv.ID)
		}
		return fmt.Errorf("%w; server %d deleted again", err, srv.ID)
	}
	if err := c.wait(ctx, log, append([]*hcloud.Action{res.Action}, res.NextActions...)...); err != nil {
		return nil, undo(err)
	}
	fmt.Fprintf(log, "hetzner: enabling the rescue system on server %d\n", srv.ID)
	rr, resp, err := c.hc.Server.EnableRescue(ctx, srv, hcloud.ServerEnableRescueOpts{
		Type:    hcloud.ServerRescueTypeLinux64,
		SSHKeys: []*hcloud.SSHKey{key},
	})
	if err != nil {
		return nil, undo(c.wrap(resp, err))
	}
	if err := c.wait(ctx, log, rr.Action); err != nil {
		return nil, undo(err)
	}
	cur, resp, err := c.hc.Server.GetByID(ctx, srv.ID)
	if err != nil {
		return nil, undo(c.wrap(resp, err))
	}
	if cur == nil {
		return nil, fmt.Errorf("hetzner: server %d vanished while it was being made", srv.ID)
	}
	var a *hcloud.Action
	if cur.Status == hcloud.ServerStatusRunning {
		fmt.Fprintf(log, "hetzner: resetting server %d into the rescue system\n", srv.ID)
		a, resp, err = c.hc.Server.Reset(ctx, cur)
	} else {
		fmt.Fprintf(log, "hetzner: powering on server %d into the rescue system\n", srv.ID)
		a, resp, err = c.hc.Server.Poweron(ctx, cur)
	}
	if err != nil {
		return nil, undo(c.wrap(resp, err))
	}
	if err := c.wait(ctx, log, a); err != nil {
		return nil, undo(err)
	}
	cur, resp, err = c.hc.Server.GetByID(ctx, srv.ID)
	if err != nil {
		return nil, undo(c.wrap(resp, err))
	}
	if cur == nil {
		return nil, fmt.Errorf("hetzner: server %d vanished while it was being made", srv.ID)
	}
	out := serverFrom(cur)
	return &out, nil
}

// ensureKey finds the API's SSH key with the fingerprint of pub, or
// uploads pub.
func (c *Client) ensureKey(ctx context.Context, pub string, log io.Writer) (*hcloud.SSHKey, error) {
	fp, err := Fingerprint(pub)
	if err != nil {
		return nil, err
	}
	k, resp, err := c.hc.SSHKey.GetByFingerprint(ctx, fp)
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	if k != nil {
		fmt.Fprintf(log, "hetzner: using SSH key %q (%s)\n", k.Name, fp)
		return k, nil
	}
	name := "nbship-" + strings.ReplaceAll(fp, ":", "")[:12]
	k, resp, err = c.hc.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{
		Name:      name,
		PublicKey: strings.TrimSpace(pub),
		Labels:    map[string]string{LabelKey: "key"},
	})
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	fmt.Fprintf(log, "hetzner: uploaded SSH key %s as %q\n", fp, k.Name)
	return k, nil
}

// ActionError is an action the API ran that ended in an error.
type ActionError struct {
	ID      int64
	Command string
	Code    string
	Message string
}

func (e *ActionError) Error() string {
	return fmt.Sprintf("hetzner: action %s (%d) failed: %s (%s)", e.Command, e.ID, e.Message, e.Code)
}

// wait polls actions until they end, saying their progress in a line when
// it changes.
func (c *Client) wait(ctx context.Context, log io.Writer, actions ...*hcloud.Action) error {
	seen := map[int64]int{}
	err := c.hc.Action.WaitForFunc(ctx, func(a *hcloud.Action) error {
		switch a.Status {
		case hcloud.ActionStatusError:
			return &ActionError{ID: a.ID, Command: a.Command, Code: a.ErrorCode, Message: c.redact(a.ErrorMessage)}
		case hcloud.ActionStatusSuccess:
			fmt.Fprintf(log, "hetzner: %s done\n", a.Command)
		default:
			if p, ok := seen[a.ID]; !ok || p != a.Progress {
				fmt.Fprintf(log, "hetzner: %s %d%%\n", a.Command, a.Progress)
			}
		}
		seen[a.ID] = a.Progress
		return nil
	}, actions...)
	var ae *ActionError
	if err == nil || errors.As(err, &ae) {
		return err
	}
	return c.wrap(nil, err)
}

// List returns the servers labelled nbship=builder, by name and ID.
func (c *Client) List(ctx context.Context) ([]provider.Server, error) {
	ss, err := c.hc.Server.AllWithOpts(ctx, hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{LabelSelector: selector}})
	if err != nil {
		return nil, c.wrap(nil, err)
	}
	out := []provider.Server{}
	for _, s := range ss {
		if !ours(s) { // the selector should have done it; be sure
			continue
		}
		out = append(out, serverFrom(s))
	}
	if len(out) > 0 {
		if p, resp, err := c.hc.Pricing.Get(ctx); err == nil {
			for i := range out {
				out[i].Currency = p.Currency
			}
		} else {
			return nil, c.wrap(resp, err)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func ours(s *hcloud.Server) bool { return s.Labels[LabelKey] == LabelValue }

// NotFoundError says the API has no such thing, or none nbship made.
type NotFoundError struct {
	What, Name string
	Foreign    bool // it exists, but nbship did not make it
}

func (e *NotFoundError) Error() string {
	if e.Foreign {
		return fmt.Sprintf("hetzner: %s %s was not made by nbship (no label %s); leaving it alone", e.What, e.Name, selector)
	}
	return fmt.Sprintf("hetzner: no %s %q", e.What, e.Name)
}

func (c *Client) get(ctx context.Context, id string) (*hcloud.Server, error) {
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("hetzner: server ID %q is not a number (like 4711); 'nbship builders list --provider hetzner' shows them", id)
	}
	s, resp, err := c.hc.Server.GetByID(ctx, n)
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	if s == nil {
		return nil, &NotFoundError{What: "server", Name: id}
	}
	if !ours(s) {
		return nil, &NotFoundError{What: "server", Name: id, Foreign: true}
	}
	return s, nil
}

// Get returns a server nbship made.
func (c *Client) Get(ctx context.Context, id string) (*provider.Server, error) {
	s, err := c.get(ctx, id)
	if err != nil {
		return nil, err
	}
	out := serverFrom(s)
	return &out, nil
}

// Delete removes a server nbship made and waits until it is gone.
func (c *Client) Delete(ctx context.Context, id string) error {
	s, err := c.get(ctx, id)
	if err != nil {
		return err
	}
	return c.delete(ctx, s, io.Discard)
}

func (c *Client) delete(ctx context.Context, s *hcloud.Server, log io.Writer) error {
	res, resp, err := c.hc.Server.DeleteWithResult(ctx, s)
	if err != nil {
		return c.wrap(resp, err)
	}
	return c.wait(ctx, log, res.Action)
}

// Prices returns the gross prices of the server types, per location.
func (c *Client) Prices(ctx context.Context, q provider.PriceQuery) ([]provider.Price, error) {
	p, resp, err := c.hc.Pricing.Get(ctx)
	if err != nil {
		return nil, c.wrap(resp, err)
	}
	types, err := c.hc.ServerType.All(ctx)
	if err != nil {
		return nil, c.wrap(nil, err)
	}
	arch := map[string]string{}
	for _, t := range types {
		arch[t.Name] = provider.Arch(string(t.Architecture))
	}
	out := []provider.Price{}
	for _, st := range p.ServerTypes {
		if st.ServerType == nil || (q.Type != "" && st.ServerType.Name != q.Type) {
			continue
		}
		for _, lp := range st.Pricings {
			if lp.Location == nil || (q.Location != "" && lp.Location.Name != q.Location) {
				continue
			}
			h, err1 := strconv.ParseFloat(lp.Hourly.Gross, 64)
			m, err2 := strconv.ParseFloat(lp.Monthly.Gross, 64)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("hetzner: the API's price of %s in %s is not a number (%q, %q)", st.ServerType.Name, lp.Location.Name, lp.Hourly.Gross, lp.Monthly.Gross)
			}
			out = append(out, provider.Price{
				Type: st.ServerType.Name, Location: lp.Location.Name, Arch: arch[st.ServerType.Name],
				Hourly: h, Monthly: m, Currency: p.Currency, Note: "gross",
			})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Location < out[j].Location
	})
	return out, nil
}

func serverFrom(s *hcloud.Server) provider.Server {
	out := provider.Server{
		Provider: Name,
		ID:       strconv.FormatInt(s.ID, 10),
		Name:     s.Name,
		Status:   string(s.Status),
		Running:  s.Status == hcloud.ServerStatusRunning,
		Created:  s.Created,
	}
	if !s.PublicNet.IPv4.IsUnspecified() {
		out.IPv4 = s.PublicNet.IPv4.IP.String()
	}
	if n := s.PublicNet.IPv6.Network; n != nil {
		out.IPv6 = n.String()
	} else if ip := s.PublicNet.IPv6.IP; ip != nil {
		out.IPv6 = ip.String()
	}
	if s.Location != nil {
		out.Location = s.Location.Name
	}
	if s.ServerType != nil {
		out.Type = s.ServerType.Name
		out.Arch = provider.Arch(string(s.ServerType.Architecture))
		for _, p := range s.ServerType.Pricings {
			if p.Location != nil && p.Location.Name == out.Location {
				out.Hourly, _ = strconv.ParseFloat(p.Hourly.Gross, 64)
			}
		}
	}
	for k, v := range s.Labels {
		if v == "" {
			out.Labels = append(out.Labels, k)
		} else {
			out.Labels = append(out.Labels, k+"="+v)
		}
	}
	slices.Sort(out.Labels)
	return out
}
