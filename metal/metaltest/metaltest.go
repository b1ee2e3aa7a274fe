// Package metaltest is a fake Packet (Equinix Metal) API for tests: an
// httptest server under /metal/v1/ that answers the requests package metal
// makes with the JSON shapes and error bodies of the real API, records
// what it was sent, and fails on request. It also has the small SSH
// servers the machines and reboot tests talk to.
package metaltest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BasePath is where the fake API lives on its server, like the real one's
// /metal/v1/.
const BasePath = "/metal/v1/"

// Device is a device the fake API knows.
type Device struct {
	ID        string
	Hostname  string
	State     string // "active", "provisioning", …
	Plan      string
	Metro     string
	Facility  string
	PublicIP  string // public IPv4 (address_family 4, public, management)
	PrivateIP string // private IPv4
	Tags      []string
}

// Request is a spot market request the fake API knows.
type Request struct {
	ID         string
	Plan       string
	Metro      string
	Facilities []string
	Min, Max   int
	MaxBid     float64
	Hostname   string
	IPXEURL    string
	Tags       []string
	DeviceIDs  []string
}

// Call is one request the fake API received.
type Call struct {
	Method string
	Path   string // relative to BasePath
	Query  url.Values
	Token  string // the X-Auth-Token header
	Body   []byte
}

// Failure is a canned error answer.
type Failure struct {
	Status     int
	Messages   []string      // the {"errors": [...]} body; none gives an empty body
	RetryAfter string        // Retry-After header, if any
	Hang       time.Duration // wait this long (or until the client gives up) first; then Status 0 answers as usual
}

// Server is the fake API.
type Server struct {
	*httptest.Server
	Token     string
	ProjectID string

	mu       sync.Mutex
	devices  map[string]*Device
	requests map[string]*Request
	metro    map[string]map[string]float64 // metro → plan → price
	facility map[string]map[string]float64
	calls    []Call
	fail     []Failure
	nextID   int
	onReboot func(id string)
}

// NewServer starts a fake API accepting token for project; it is closed
// when the test ends.
func NewServer(t testing.TB, token, projectID string) *Server {
	t.Helper()
	s := &Server{
		Token:     token,
		ProjectID: projectID,
		devices:   map[string]*Device{},
		requests:  map[string]*Request{},
		metro:     map[string]map[string]float64{},
		facility:  map[string]map[string]float64{},
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// APIURL is the base URL to give the client, without the trailing slash
// (the client must add it).
func (s *Server) APIURL() string { return s.URL + strings.TrimSuffix(BasePath, "/") }

// AddDevice adds or replaces a device.
func (s *Server) AddDevice(d Device) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.Tags = slices.Clone(d.Tags)
	s.devices[d.ID] = &d
}

// Device returns the device's current state.
func (s *Server) Device(id string) Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := *s.devices[id]
	d.Tags = slices.Clone(d.Tags)
	return d
}

// AddRequest adds or replaces a spot market request.
func (s *Server) AddRequest(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[r.ID] = &r
}

// HasRequest reports whether the request exists.
func (s *Server) HasRequest(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.requests[id]
	return ok
}

// SetPrice sets the spot price of plan in a metro (byFacility false) or
// a facility.
func (s *Server) SetPrice(byFacility bool, location, plan string, price float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.metro
	if byFacility {
		m = s.facility
	}
	if m[location] == nil {
		m[location] = map[string]float64{}
	}
	m[location][plan] = price
}

// Fail makes the next len(fs) requests get these answers, in order.
func (s *Server) Fail(fs ...Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = append(s.fail, fs...)
}

// OnReboot sets a function called (before the answer) when a device is
// asked to reboot.
func (s *Server) OnReboot(f func(id string)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onReboot = f
}

// Calls returns the requests received so far.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

type obj = map[string]any

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rel := strings.TrimPrefix(r.URL.Path, BasePath)
	s.mu.Lock()
	s.calls = append(s.calls, Call{Method: r.Method, Path: rel, Query: r.URL.Query(), Token: r.Header.Get("X-Auth-Token"), Body: body})
	if len(s.fail) > 0 {
		f := s.fail[0]
		s.fail = s.fail[1:]
		s.mu.Unlock()
		if f.Hang > 0 {
			select {
			case <-time.After(f.Hang):
			case <-r.Context().Done():
				return
			}
		}
		if f.Status == 0 {
			s.mu.Lock()
			s.route(w, r, body)
			s.mu.Unlock()
			return
		}
		if f.RetryAfter != "" {
			w.Header().Set("Retry-After", f.RetryAfter)
		}
		if f.Messages == nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.Status)
			return
		}
		writeJSON(w, f.Status, obj{"errors": f.Messages})
		return
	}
	defer s.mu.Unlock()
	s.route(w, r, body)
}

// route answers r as the API would; s.mu is held.
func (s *Server) route(w http.ResponseWriter, r *http.Request, body []byte) {
	rel, ok := strings.CutPrefix(r.URL.Path, BasePath)
	if !ok {
		writeJSON(w, http.StatusNotFound, obj{"errors": []string{"Not found"}})
		return
	}
	if r.Header.Get("X-Auth-Token") != s.Token {
		writeJSON(w, http.StatusUnauthorized, obj{"errors": []string{"Invalid authentication token"}})
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodDelete && r.Header.Get("Content-Type") != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, obj{"errors": []string{"Content-Type must be application/json"}})
		return
	}
	parts := strings.Split(strings.TrimSuffix(rel, "/"), "/")
	route := func(method string, pattern ...string) bool {
		if r.Method != method || len(parts) != len(pattern) {
			return false
		}
		for i, p := range pattern {
			if p != "*" && p != parts[i] {
				return false
			}
		}
		return true
	}
	switch {
	case route("GET", "market", "spot", "prices"):
		writeJSON(w, 200, obj{"spot_market_prices": pricesJSON(s.facility)})
	case route("GET", "market", "spot", "prices", "metros"):
		writeJSON(w, 200, obj{"spot_market_prices": pricesJSON(s.metro)})
	case route("GET", "projects", "*", "spot-market-requests"):
		if !s.project(w, parts[1]) {
			return
		}
		list := []obj{}
		for _, id := range sortedKeys(s.requests) {
			list = append(list, s.requestJSON(s.requests[id]))
		}
		writeJSON(w, 200, obj{"spot_market_requests": list})
	case route("POST", "projects", "*", "spot-market-requests"):
		if !s.project(w, parts[1]) {
			return
		}
		s.create(w, body)
	case route("GET", "spot-market-requests", "*"):
		if req, ok := s.requests[parts[1]]; ok {
			writeJSON(w, 200, s.requestJSON(req))
			return
		}
		notFound(w)
	case route("DELETE", "spot-market-requests", "*"):
		req, ok := s.requests[parts[1]]
		if !ok {
			notFound(w)
			return
		}
		var p struct {
			Force bool `json:"force_termination"`
		}
		json.Unmarshal(body, &p)
		delete(s.requests, req.ID)
		if p.Force {
			for _, id := range req.DeviceIDs {
				delete(s.devices, id)
			}
		}
		w.WriteHeader(http.StatusNoContent)
	case route("GET", "projects", "*", "devices"):
		if !s.project(w, parts[1]) {
			return
		}
		list := []obj{}
		for _, id := range sortedKeys(s.devices) {
			list = append(list, deviceJSON(s.devices[id]))
		}
		writeJSON(w, 200, obj{"devices": list, "meta": obj{
			"first": obj{"href": "/metal/v1/projects/" + parts[1] + "/devices?page=1"},
			"last":  obj{"href": "/metal/v1/projects/" + parts[1] + "/devices?page=1"},
			"self":  obj{"href": "/metal/v1/projects/" + parts[1] + "/devices?page=1"},
			"total": len(list), "current_page": 1, "last_page": 1,
		}})
	case route("GET", "devices", "*"):
		if d, ok := s.devices[parts[1]]; ok {
			writeJSON(w, 200, deviceJSON(d))
			return
		}
		notFound(w)
	case route("PUT", "devices", "*"):
		d, ok := s.devices[parts[1]]
		if !ok {
			notFound(w)
			return
		}
		var u struct {
			Tags *[]string `json:"tags"`
		}
		if err := json.Unmarshal(body, &u); err != nil {
			writeJSON(w, 422, obj{"errors": []string{"malformed JSON: " + err.Error()}})
			return
		}
		if u.Tags != nil {
			d.Tags = slices.Clone(*u.Tags)
		}
		writeJSON(w, 200, deviceJSON(d))
	case route("POST", "devices", "*", "actions"):
		d, ok := s.devices[parts[1]]
		if !ok {
			notFound(w)
			return
		}
		var a struct {
			Type string `json:"type"`
		}
		json.Unmarshal(body, &a)
		if a.Type != "reboot" {
			writeJSON(w, 422, obj{"errors": []string{fmt.Sprintf("unknown action %q", a.Type)}})
			return
		}
		if f := s.onReboot; f != nil {
			s.mu.Unlock()
			f(d.ID)
			s.mu.Lock()
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		notFound(w)
	}
}

func (s *Server) project(w http.ResponseWriter, id string) bool {
	if id != s.ProjectID {
		notFound(w)
		return false
	}
	return true
}

// CreateBody is the body of a request to create a spot market request, as
// the API reads it (the fake, and tests that look at what was sent).
type CreateBody struct {
	Min        int      `json:"devices_min"`
	Max        int      `json:"devices_max"`
	Metro      string   `json:"metro"`
	Facilities []string `json:"facilities"`
	MaxBid     float64  `json:"max_bid_price"`
	P          struct {
		OS        string   `json:"operating_system"`
		Plan      string   `json:"plan"`
		IPXE      string   `json:"ipxe_script_url"`
		AlwaysPXE bool     `json:"always_pxe"`
		Tags      []string `json:"tags"`
		Hostname  string   `json:"hostname"`
		UserData  string   `json:"userdata"`
		Billing   string   `json:"billing_cycle"`
	} `json:"instance_parameters"`
}

func (s *Server) create(w http.ResponseWriter, body []byte) {
	var in CreateBody
	if err := json.Unmarshal(body, &in); err != nil {
		writeJSON(w, 422, obj{"errors": []string{"malformed JSON: " + err.Error()}})
		return
	}
	var errs []string
	if in.MaxBid <= 0 {
		errs = append(errs, "max_bid_price must be greater than 0")
	}
	if in.P.Plan == "" {
		errs = append(errs, "instance_parameters.plan is required")
	}
	if in.P.OS == "custom_ipxe" && in.P.IPXE == "" {
		errs = append(errs, "ipxe_script_url is required for custom_ipxe")
	}
	if len(errs) > 0 {
		writeJSON(w, 422, obj{"errors": errs})
		return
	}
	s.nextID++
	req := &Request{
		ID:         fmt.Sprintf("5a7e0000-0000-4000-8000-%012d", s.nextID),
		Plan:       in.P.Plan,
		Metro:      in.Metro,
		Facilities: in.Facilities,
		Min:        in.Min,
		Max:        in.Max,
		MaxBid:     in.MaxBid,
		Hostname:   in.P.Hostname,
		IPXEURL:    in.P.IPXE,
		Tags:       in.P.Tags,
	}
	s.requests[req.ID] = req
	writeJSON(w, http.StatusCreated, s.requestJSON(req))
}

func (s *Server) requestJSON(r *Request) obj {
	devs := []obj{}
	for _, id := range r.DeviceIDs {
		if d, ok := s.devices[id]; ok {
			devs = append(devs, deviceJSON(d))
		} else {
			devs = append(devs, obj{"href": "/metal/v1/devices/" + id})
		}
	}
	o := obj{
		"id":            r.ID,
		"href":          "/metal/v1/spot-market-requests/" + r.ID,
		"devices_min":   r.Min,
		"devices_max":   r.Max,
		"max_bid_price": r.MaxBid,
		"created_at":    "2024-05-01T10:00:00Z",
		"plan":          obj{"id": "9c4e0000-0000-4000-8000-000000000001", "slug": r.Plan, "href": "/metal/v1/plans/9c4e0000-0000-4000-8000-000000000001"},
		"project":       obj{"href": "/metal/v1/projects/" + s.ProjectID},
		"devices":       devs,
		"instance_parameters": obj{
			"hostname":         r.Hostname,
			"plan":             r.Plan,
			"operating_system": "custom_ipxe",
			"ipxe_script_url":  r.IPXEURL,
			"billing_cycle":    "hourly",
			"tags":             r.Tags,
			"userdata":         "",
		},
	}
	if r.Metro != "" {
		o["metro"] = obj{"id": "0b7d0000-0000-4000-8000-000000000001", "code": r.Metro, "name": strings.ToUpper(r.Metro), "href": "/metal/v1/locations/metros/" + r.Metro}
	}
	facs := []obj{}
	for _, f := range r.Facilities {
		facs = append(facs, obj{"id": "fac10000-0000-4000-8000-000000000001", "code": f, "href": "/metal/v1/facilities/" + f})
	}
	o["facilities"] = facs
	return o
}

func deviceJSON(d *Device) obj {
	ips := []obj{}
	if d.PublicIP != "" {
		ips = append(ips, obj{"id": "1b000000-0000-4000-8000-000000000001", "address": d.PublicIP, "address_family": 4, "public": true, "management": true, "cidr": 31, "href": "/metal/v1/ips/1b000000-0000-4000-8000-000000000001"})
	}
	if d.PrivateIP != "" {
		ips = append(ips, obj{"id": "1b000000-0000-4000-8000-000000000002", "address": d.PrivateIP, "address_family": 4, "public": false, "management": true, "cidr": 31, "href": "/metal/v1/ips/1b000000-0000-4000-8000-000000000002"})
	}
	ips = append(ips, obj{"id": "1b000000-0000-4000-8000-000000000003", "address": "2604:1380::1", "address_family": 6, "public": true, "management": true, "cidr": 127})
	tags := d.Tags
	if tags == nil {
		tags = []string{}
	}
	return obj{
		"id":               d.ID,
		"href":             "/metal/v1/devices/" + d.ID,
		"hostname":         d.Hostname,
		"state":            d.State,
		"tags":             tags,
		"spot_instance":    true,
		"always_pxe":       true,
		"ipxe_script_url":  "http://netboot.example/hydra-" + d.Plan + "/netboot.ipxe",
		"plan":             obj{"id": "9c4e0000-0000-4000-8000-000000000001", "slug": d.Plan, "href": "/metal/v1/plans/9c4e0000-0000-4000-8000-000000000001"},
		"facility":         obj{"id": "fac10000-0000-4000-8000-000000000001", "code": d.Facility, "href": "/metal/v1/facilities/" + d.Facility, "metro": obj{"code": d.Metro}},
		"metro":            obj{"id": "0b7d0000-0000-4000-8000-000000000001", "code": d.Metro, "href": "/metal/v1/locations/metros/" + d.Metro},
		"operating_system": obj{"slug": "custom_ipxe", "name": "Custom iPXE"},
		"ip_addresses":     ips,
	}
}

func pricesJSON(m map[string]map[string]float64) obj {
	out := obj{}
	for loc, plans := range m {
		ps := obj{}
		for p, v := range plans {
			ps[p] = obj{"price": v}
		}
		out[loc] = ps
	}
	return out
}

func notFound(w http.ResponseWriter) {
	writeJSON(w, http.StatusNotFound, obj{"errors": []string{"Not found"}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
