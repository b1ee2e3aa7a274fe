package metal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/packethost/packngo"
)

// OperatingSystem is what spot requests boot: the iPXE script at
// CreateRequest.IPXEURL, which loads nbship's netboot image.
const OperatingSystem = "custom_ipxe"

// CreateRequest is a spot market request to make.
type CreateRequest struct {
	Plan       string   // e.g. c2.large.arm
	Metro      string   // either Metro …
	Facilities []string // … or Facilities
	MaxBid     float64  // USD per device and hour; rounded to cents
	Min, Max   int      // devices
	Hostname   string
	IPXEURL    string // the netboot.ipxe the devices boot
	Tags       []string
	AlwaysPXE  bool   // boot over iPXE on every boot, not only the first
	UserData   string // handed to the device as is
}

var (
	slugRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
)

// Validate checks r before anything is sent.
func (r *CreateRequest) Validate() error {
	if r.Plan == "" {
		return errors.New("spot: no plan given (like c2.large.arm)")
	}
	if !slugRE.MatchString(r.Plan) {
		return fmt.Errorf("spot: plan %q is not a plan slug (like c2.large.arm)", r.Plan)
	}
	switch {
	case r.Metro == "" && len(r.Facilities) == 0:
		return errors.New("spot: no location: give a metro or facilities")
	case r.Metro != "" && len(r.Facilities) > 0:
		return errors.New("spot: give a metro or facilities, not both")
	}
	for _, l := range append([]string{r.Metro}, r.Facilities...) {
		if l != "" && !slugRE.MatchString(l) {
			return fmt.Errorf("spot: location %q is not a metro or facility code (like da or dfw2)", l)
		}
	}
	if math.IsNaN(r.MaxBid) || math.IsInf(r.MaxBid, 0) || roundCents(r.MaxBid) < 0.01 {
		return fmt.Errorf("spot: max bid %v is not a price of at least 0.01 USD per hour", r.MaxBid)
	}
	if r.Min < 1 || r.Max < 1 {
		return fmt.Errorf("spot: min and max devices must be at least 1 (got %d and %d)", r.Min, r.Max)
	}
	if r.Min > r.Max {
		return fmt.Errorf("spot: min devices %d is more than max %d", r.Min, r.Max)
	}
	if r.Hostname == "" {
		return errors.New("spot: no hostname given")
	}
	if len(r.Hostname) > 253 || !hostnameRE.MatchString(r.Hostname) {
		return fmt.Errorf("spot: hostname %q is not a valid host name", r.Hostname)
	}
	if err := checkIPXEURL(r.IPXEURL); err != nil {
		return err
	}
	for _, t := range r.Tags {
		if strings.TrimSpace(t) == "" {
			return errors.New("spot: empty tag")
		}
	}
	return nil
}

func checkIPXEURL(s string) error {
	if s == "" {
		return errors.New("spot: no iPXE script URL given")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("spot: iPXE script URL %q is not an http(s) URL", s)
	}
	return nil
}

func roundCents(f float64) float64 { return math.Round(f*100) / 100 }

// body is what packngo sends for r. packngo rounds the bid to cents too;
// doing it here makes --dry-run and the cost shown match what is sent.
func (r *CreateRequest) body() *packngo.SpotMarketRequestCreateRequest {
	tags := make([]string, 0, len(r.Tags))
	for _, t := range r.Tags {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return &packngo.SpotMarketRequestCreateRequest{
		DevicesMin:  r.Min,
		DevicesMax:  r.Max,
		Metro:       r.Metro,
		FacilityIDs: r.Facilities,
		MaxBidPrice: roundCents(r.MaxBid),
		Parameters: packngo.SpotMarketRequestInstanceParameters{
			AlwaysPXE:       r.AlwaysPXE,
			IPXEScriptURL:   r.IPXEURL,
			BillingCycle:    "hourly",
			Hostname:        r.Hostname,
			OperatingSystem: OperatingSystem,
			Plan:            r.Plan,
			Tags:            tags,
			UserData:        r.UserData,
		},
	}
}

// Body returns the JSON body the create request sends, on one line as
// every JSON nbship prints.
func (r *CreateRequest) Body() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(r.body())
}

// Request is a spot market request as the API reports it.
type Request struct {
	ID         string   `json:"id"`
	Href       string   `json:"href,omitempty"`
	Plan       string   `json:"plan"`
	Metro      string   `json:"metro,omitempty"`
	Facilities []string `json:"facilities,omitempty"`
	Min        int      `json:"min"`
	Max        int      `json:"max"`
	MaxBid     float64  `json:"max_bid"`
	Hostname   string   `json:"hostname,omitempty"`
	IPXEURL    string   `json:"ipxe_script_url,omitempty"`
	Tags       []string `json:"tags,omitempty"`
	Devices    []Device `json:"devices"`
}

func requestFrom(s *packngo.SpotMarketRequest) Request {
	r := Request{
		ID:       s.ID,
		Href:     s.Href,
		Plan:     s.Plan.Slug,
		Min:      s.DevicesMin,
		Max:      s.DevicesMax,
		MaxBid:   s.MaxBidPrice,
		Hostname: s.Parameters.Hostname,
		IPXEURL:  s.Parameters.IPXEScriptURL,
		Tags:     s.Parameters.Tags,
		Devices:  []Device{},
	}
	if r.ID == "" {
		r.ID = idFromHref(s.Href)
	}
	if r.Plan == "" {
		r.Plan = s.Parameters.Plan
	}
	if s.Metro != nil {
		r.Metro = s.Metro.Code
	}
	for _, f := range s.Facilities {
		if f.Code != "" {
			r.Facilities = append(r.Facilities, f.Code)
		}
	}
	for i := range s.Devices {
		r.Devices = append(r.Devices, deviceFrom(&s.Devices[i]))
	}
	return r
}

// Location is where r asks for devices: its metro or its facilities.
func (r Request) Location() string {
	if r.Metro != "" {
		return r.Metro
	}
	return strings.Join(r.Facilities, ",")
}

var requestIncludes = []string{"devices", "plan", "metro", "facilities"}

// Create makes the spot market request. It costs money once the market
// fills it.
func (c *Client) Create(ctx context.Context, r *CreateRequest) (*Request, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	pid, err := c.project()
	if err != nil {
		return nil, err
	}
	return one(ctx, c, func(a api) (*packngo.SpotMarketRequest, *packngo.Response, error) {
		return a.requests.Create(r.body(), pid)
	}, requestFrom)
}

// Requests lists the project's spot market requests by ID.
func (c *Client) Requests(ctx context.Context) ([]Request, error) {
	pid, err := c.project()
	if err != nil {
		return nil, err
	}
	var out []Request
	err = c.call(ctx, func(a api) error {
		ss, _, err := a.requests.List(pid, &packngo.ListOptions{Includes: requestIncludes})
		for i := range ss {
			out = append(out, requestFrom(&ss[i]))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Request returns one spot market request with its devices.
func (c *Client) Request(ctx context.Context, id string) (*Request, error) {
	if err := checkUUID("spot request", id); err != nil {
		return nil, err
	}
	return one(ctx, c, func(a api) (*packngo.SpotMarketRequest, *packngo.Response, error) {
		return a.requests.Get(id, &packngo.GetOptions{Includes: requestIncludes})
	}, requestFrom)
}

// Cancel deletes the spot market request; with force the API also
// terminates the devices it made.
func (c *Client) Cancel(ctx context.Context, id string, force bool) error {
	if err := checkUUID("spot request", id); err != nil {
		return err
	}
	return c.call(ctx, func(a api) error {
		_, err := a.requests.Delete(id, force)
		return err
	})
}

// Price is the current spot price of a plan in a metro or facility.
type Price struct {
	Location string  `json:"location"`
	Plan     string  `json:"plan"`
	Price    float64 `json:"price"` // USD per device and hour
}

// Prices returns the current spot prices by metro (or by facility), of one
// plan or of all when plan is empty, sorted by location and plan.
func (c *Client) Prices(ctx context.Context, byFacility bool, plan string) ([]Price, error) {
	var m packngo.PriceMap
	err := c.call(ctx, func(a api) error {
		var err error
		if byFacility {
			m, _, err = a.prices.PricesByFacility()
		} else {
			m, _, err = a.prices.PricesByMetro()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out := []Price{}
	for loc, plans := range m {
		for p, v := range plans {
			if plan == "" || p == plan {
				out = append(out, Price{Location: loc, Plan: p, Price: v})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Location != out[j].Location {
			return out[i].Location < out[j].Location
		}
		return out[i].Plan < out[j].Plan
	})
	return out, nil
}

// Quote is what a CreateRequest may cost per hour.
type Quote struct {
	Plan    string  `json:"plan"`
	Prices  []Price `json:"prices"`  // now, per location asked for
	MaxBid  float64 `json:"max_bid"` // as sent, in cents
	Max     int     `json:"max"`
	Worst   float64 `json:"worst_per_hour"`   // MaxBid × Max
	Current float64 `json:"current_per_hour"` // lowest current price × Max
}

// BelowMarket reports whether the bid is under every current price, so the
// request would wait for the price to drop.
func (q *Quote) BelowMarket() bool {
	for _, p := range q.Prices {
		if q.MaxBid >= p.Price {
			return false
		}
	}
	return len(q.Prices) > 0
}

// NoPriceError says the plan has no spot price where it was asked for.
type NoPriceError struct {
	Plan      string
	Locations []string
}

func (e *NoPriceError) Error() string {
	return fmt.Sprintf("spot: plan %s has no spot price in %s", e.Plan, strings.Join(e.Locations, ", "))
}

// Quote fetches the current price of r's plan where r asks for it.
func (c *Client) Quote(ctx context.Context, r *CreateRequest) (*Quote, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	byFacility := r.Metro == ""
	all, err := c.Prices(ctx, byFacility, r.Plan)
	if err != nil {
		return nil, err
	}
	want := r.Facilities
	if !byFacility {
		want = []string{r.Metro}
	}
	q := &Quote{Plan: r.Plan, MaxBid: roundCents(r.MaxBid), Max: r.Max, Prices: []Price{}}
	var missing []string
	for _, loc := range want {
		i := slices.IndexFunc(all, func(p Price) bool { return p.Location == loc })
		if i < 0 {
			missing = append(missing, loc)
			continue
		}
		q.Prices = append(q.Prices, all[i])
	}
	if len(missing) > 0 {
		return nil, &NoPriceError{Plan: r.Plan, Locations: missing}
	}
	q.Worst = q.MaxBid * float64(q.Max)
	low := q.Prices[0].Price
	for _, p := range q.Prices[1:] {
		low = min(low, p.Price)
	}
	q.Current = low * float64(q.Max)
	return q, nil
}
