// Package packet is the Packet (Equinix Metal) API behind the provider
// interface, through package metal (the Packet API client) and its packngo client. Packet's builders
// come from spot market requests: Create makes a request for one device
// that boots CreateRequest.IPXEURL, List shows the requests' devices (and
// the requests still waiting for one), and Delete cancels the request a
// device or request ID belongs to, terminating its devices. Devices no
// spot request made are never touched.
//
// Equinix Metal closed on 2026-06-30; this serves API-compatible
// endpoints named with an API URL.
package packet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	"github.com/nbship/nbship/metal"
	"github.com/nbship/nbship/provider"
)

// Name is the provider's name on the command line.
const Name = "packet"

// Client is a Packet project behind the provider interface.
type Client struct {
	api *metal.Client
}

var _ provider.Provider = (*Client)(nil)

// New wraps a Packet API client.
func New(c *metal.Client) *Client { return &Client{api: c} }

// Name returns "packet".
func (c *Client) Name() string { return Name }

func request(r provider.CreateRequest) *metal.CreateRequest {
	tags := r.Tags
	if len(tags) == 0 {
		tags = []string{"hydra"}
	}
	return &metal.CreateRequest{
		Plan: r.Type, Metro: r.Location, MaxBid: r.MaxBid, Min: 1, Max: 1,
		Hostname: r.Name, IPXEURL: r.IPXEURL, Tags: tags,
	}
}

// DryRun returns the body Create would send, indented. It needs no token
// and sends nothing.
func DryRun(r provider.CreateRequest) ([]byte, error) {
	return request(r).Body()
}

// Quote is the spot request's cost: the price now and the most it may be.
func (c *Client) Quote(ctx context.Context, r provider.CreateRequest) (*metal.Quote, error) {
	return c.api.Quote(ctx, request(r))
}

// Create makes a spot market request for one device. The device comes
// when the market fills the request; until then the Server returned is
// the request, with status "waiting".
func (c *Client) Create(ctx context.Context, r provider.CreateRequest) (*provider.Server, error) {
	if r.Progress == nil {
		r.Progress = io.Discard
	}
	req, err := c.api.Create(ctx, request(r))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(r.Progress, "packet: spot request %s made; its device comes when the market fills it\n", req.ID)
	if len(req.Devices) > 0 {
		s := fromDevice(req.Devices[0], req)
		return &s, nil
	}
	s := fromRequest(*req)
	return &s, nil
}

// List returns the spot requests' devices, and the requests that have
// none yet.
func (c *Client) List(ctx context.Context) ([]provider.Server, error) {
	reqs, err := c.api.Requests(ctx)
	if err != nil {
		return nil, err
	}
	out := []provider.Server{}
	for _, r := range reqs {
		if len(r.Devices) == 0 {
			out = append(out, fromRequest(r))
		}
		for _, d := range r.Devices {
			out = append(out, fromDevice(d, &r))
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

// Get returns a device or a waiting request of a spot request.
func (c *Client) Get(ctx context.Context, id string) (*provider.Server, error) {
	r, d, err := c.find(ctx, id)
	if err != nil {
		return nil, err
	}
	if d == nil {
		s := fromRequest(*r)
		return &s, nil
	}
	s := fromDevice(*d, r)
	return &s, nil
}

// ErrNotBuilder says an ID is neither a spot request nor one of their devices.
var ErrNotBuilder = errors.New("packet: no spot request has this ID or a device with it")

func (c *Client) find(ctx context.Context, id string) (*metal.Request, *metal.Device, error) {
	reqs, err := c.api.Requests(ctx)
	if err != nil {
		return nil, nil, err
	}
	for i := range reqs {
		if reqs[i].ID == id {
			return &reqs[i], nil, nil
		}
		if j := slices.IndexFunc(reqs[i].Devices, func(d metal.Device) bool { return d.ID == id }); j >= 0 {
			return &reqs[i], &reqs[i].Devices[j], nil
		}
	}
	return nil, nil, fmt.Errorf("%w: %s", ErrNotBuilder, id)
}

// Delete cancels the spot request id is or belongs to, terminating its
// devices.
func (c *Client) Delete(ctx context.Context, id string) error {
	r, _, err := c.find(ctx, id)
	if err != nil {
		return err
	}
	return c.api.Cancel(ctx, r.ID, true)
}

// Prices returns the spot prices per metro.
func (c *Client) Prices(ctx context.Context, q provider.PriceQuery) ([]provider.Price, error) {
	ps, err := c.api.Prices(ctx, false, q.Type)
	if err != nil {
		return nil, err
	}
	out := []provider.Price{}
	for _, p := range ps {
		if q.Location != "" && p.Location != q.Location {
			continue
		}
		arch := ""
		if sys, err := metal.PlanSystem(p.Plan, nil); err == nil {
			arch = provider.Arch(sys)
		}
		out = append(out, provider.Price{Type: p.Plan, Location: p.Location, Arch: arch, Hourly: p.Price, Currency: "USD", Note: "spot"})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Location < out[j].Location
	})
	return out, nil
}

func fromRequest(r metal.Request) provider.Server {
	arch := ""
	if sys, err := metal.PlanSystem(r.Plan, nil); err == nil {
		arch = provider.Arch(sys)
	}
	return provider.Server{
		Provider: Name, ID: r.ID, Name: r.Hostname, Type: r.Plan, Location: r.Location(), Arch: arch,
		Status: "waiting", Hourly: r.MaxBid, Currency: "USD", Labels: r.Tags,
	}
}

func fromDevice(d metal.Device, r *metal.Request) provider.Server {
	arch := ""
	if sys, err := metal.PlanSystem(d.Plan, nil); err == nil {
		arch = provider.Arch(sys)
	}
	loc := d.Metro
	if loc == "" {
		loc = d.Facility
	}
	s := provider.Server{
		Provider: Name, ID: d.ID, Name: d.Hostname, Type: d.Plan, Location: loc, Arch: arch,
		IPv4: d.PublicIPv4, Status: d.State, Running: d.Active(), Currency: "USD", Labels: d.Tags,
	}
	if r != nil {
		s.Hourly = r.MaxBid // the most it costs; the market price may be lower
	}
	return s
}
