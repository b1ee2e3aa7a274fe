// Package hetznertest is a fake Hetzner Cloud API for tests: an httptest
// server under /v1 that answers the requests package hetzner makes with
// the API's JSON (written with hcloud-go's own schema types), records what
// it was sent, and fails on request: a 401 for a wrong token, a 429 with
// Retry-After, a 5xx, an action that ends in an error. Actions advance one
// step each time they are polled, so the client sees their progress.
//
// The servers it makes get the IPv4 address the test gives (Address), so
// a test can point them at an sshd of its own.
package hetznertest

import (
	"crypto/md5"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
	"golang.org/x/crypto/ssh"
)

// BasePath is where the fake API lives on its server, like the real one's
// https://api.hetzner.cloud/v1.
const BasePath = "/v1"

// ServerType is a server type the fake knows, with its prices per location.
type ServerType struct {
	ID     int64
	Name   string
	Arch   string // "x86" or "arm"
	Cores  int
	Memory float32 // GB
	Disk   int     // GB
	Prices map[string]Price
}

// Price is a server type's price in one location, as decimal strings.
type Price struct {
	HourlyNet, HourlyGross   string
	MonthlyNet, MonthlyGross string
}

// Server is a server the fake knows.
type Server struct {
	ID       int64
	Name     string
	Status   string // initializing, off, running, deleting
	Type     string
	Location string
	Image    string
	IPv4     string
	IPv6     string
	Labels   map[string]string
	SSHKeys  []int64
	Rescue   bool // rescue_enabled
	Started  bool // start_after_create as sent
	Created  time.Time
}

// Key is an SSH key the fake knows.
type Key struct {
	ID          int64
	Name        string
	Fingerprint string // MD5, colon-separated, as the API gives it
	PublicKey   string
	Labels      map[string]string
}

// Call is one request the fake received.
type Call struct {
	Method string
	Path   string // after BasePath, like /servers/1/actions/poweron
	Query  url.Values
	Token  string // from Authorization: Bearer
	Body   []byte
}

// Failure is a canned answer to the next request.
type Failure struct {
	Status     int
	Code       string // error.code
	Message    string // error.message
	RetryAfter string // Retry-After header
	Raw        string // a body that is not JSON, sent as text/plain instead
}

type action struct {
	schema.Action
	steps int // polls left before it ends
	fail  *schema.ActionError
	done  func() // applied when it succeeds
}

// Fake is the fake API.
type Fake struct {
	*httptest.Server
	Token string

	mu      sync.Mutex
	address string // IPv4 of the servers it makes; 127.0.0.1 if empty

	// Set before the first request.
	Currency  string
	VATRate   string
	Steps     int  // polls an action takes to finish; 2 if 0
	EchoToken bool // 401 bodies repeat the token sent, as a careless API might

	types     []ServerType
	locations []string
	servers   map[int64]*Server
	keys      map[int64]*Key
	actions   map[int64]*action
	failNext  []Failure
	failCmd   map[string]schema.ActionError
	calls     []Call
	nextID    int64
}

// New starts a fake API that accepts token; it is closed when the test
// ends. It knows the locations fsn1, nbg1, hel1 and the server types
// cx22 (x86) and cax21 (arm) with prices there.
func New(t testing.TB, token string) *Fake {
	t.Helper()
	return NewOn(t, token, nil)
}

// NewOn is New serving on l, a listener the test opened where the client
// reaches it (such as inside a network namespace); nil is a new one on
// 127.0.0.1. The fake closes l when the test ends.
func NewOn(t testing.TB, token string, l net.Listener) *Fake {
	t.Helper()
	f := &Fake{
		Token:     token,
		Currency:  "EUR",
		VATRate:   "19.000000",
		locations: []string{"fsn1", "nbg1", "hel1"},
		servers:   map[int64]*Server{},
		keys:      map[int64]*Key{},
		actions:   map[int64]*action{},
		failCmd:   map[string]schema.ActionError{},
		nextID:    100,
	}
	both := func(hn, hg, mn, mg string) map[string]Price {
		p := Price{hn, hg, mn, mg}
		return map[string]Price{"fsn1": p, "nbg1": p, "hel1": p}
	}
	f.types = []ServerType{
		{ID: 22, Name: "cx22", Arch: "x86", Cores: 2, Memory: 4, Disk: 40, Prices: both("0.0060", "0.0071", "3.7900", "4.5101")},
		{ID: 45, Name: "cax21", Arch: "arm", Cores: 4, Memory: 8, Disk: 80, Prices: both("0.0104", "0.0124", "6.4900", "7.7231")},
	}
	f.Server = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	if l != nil {
		f.Server.Listener.Close()
		f.Server.Listener = l
	}
	f.Server.Start()
	t.Cleanup(f.Close)
	return f
}

// APIURL is the endpoint to give the client.
func (f *Fake) APIURL() string { return f.URL + BasePath }

// SetAddress sets the IPv4 address of the servers made from now on.
func (f *Fake) SetAddress(ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.address = ip
}

// AddServerType adds or replaces a server type.
func (f *Fake) AddServerType(st ServerType) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.types = slices.DeleteFunc(f.types, func(o ServerType) bool { return o.Name == st.Name })
	f.types = append(f.types, st)
}

// AddServer adds a server as it is, such as one nbship did not make.
func (f *Fake) AddServer(s Server) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.ID == 0 {
		s.ID = f.id()
	}
	if s.Created.IsZero() {
		s.Created = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	}
	f.servers[s.ID] = &s
	return s.ID
}

// AddKey adds an SSH key from its authorized_keys line.
func (f *Fake) AddKey(name, authorizedKey string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, err := f.addKey(name, authorizedKey, nil)
	if err != nil {
		return 0, err
	}
	return k.ID, nil
}

// Get returns a copy of a server and whether it exists.
func (f *Fake) Get(id int64) (Server, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.servers[id]
	if !ok {
		return Server{}, false
	}
	return *s, true
}

// Servers returns copies of all servers by ID.
func (f *Fake) Servers() []Server {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Server
	for _, s := range f.servers {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Keys returns copies of all SSH keys by ID.
func (f *Fake) Keys() []Key {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Key
	for _, k := range f.keys {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Fail makes the next len(fs) requests get these answers, in order.
func (f *Fake) Fail(fs ...Failure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = append(f.failNext, fs...)
}

// FailAction makes the next action with this command (create_server,
// enable_rescue, poweron or start_server, reset, delete_server) end in
// an error.
func (f *Fake) FailAction(command, code, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// The API names the command an action runs, which is not always the
	// endpoint's name: poweron runs start_server.
	switch command {
	case "poweron":
		command = "start_server"
	case "reset":
		command = "reset_server"
	}
	f.failCmd[command] = schema.ActionError{Code: code, Message: message}
}

// Calls returns the requests received so far.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Paths returns "METHOD PATH" of the requests received so far.
func (f *Fake) Paths() []string {
	var out []string
	for _, c := range f.Calls() {
		out = append(out, c.Method+" "+c.Path)
	}
	return out
}

func (f *Fake) id() int64 {
	f.nextID++
	return f.nextID
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	path := strings.TrimPrefix(r.URL.Path, BasePath)
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, Call{Method: r.Method, Path: path, Query: r.URL.Query(), Token: token, Body: body})
	if !strings.HasPrefix(r.URL.Path, BasePath+"/") {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	if token != f.Token {
		msg := "unable to authenticate"
		if f.EchoToken {
			msg = fmt.Sprintf("token %q is not valid", token)
		}
		writeError(w, http.StatusUnauthorized, "unauthorized", msg)
		return
	}
	if len(f.failNext) > 0 {
		fl := f.failNext[0]
		f.failNext = f.failNext[1:]
		if fl.RetryAfter != "" {
			w.Header().Set("Retry-After", fl.RetryAfter)
		}
		if fl.Raw != "" {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(fl.Status)
			io.WriteString(w, fl.Raw)
			return
		}
		writeError(w, fl.Status, fl.Code, fl.Message)
		return
	}
	f.route(w, r, path, body)
}

func (f *Fake) route(w http.ResponseWriter, r *http.Request, path string, body []byte) {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodGet && path == "/servers":
		f.listServers(w, q)
	case r.Method == http.MethodPost && path == "/servers":
		f.createServer(w, body)
	case len(parts) == 2 && parts[0] == "servers":
		id, err := strconv.ParseInt(parts[1], 10, 64)
		s, ok := f.servers[id]
		if err != nil || !ok {
			writeError(w, http.StatusNotFound, "not_found", "server with ID '"+parts[1]+"' not found")
			return
		}
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, schema.ServerGetResponse{Server: f.serverSchema(s)})
		case http.MethodDelete:
			s.Status = "deleting"
			a := f.newAction("delete_server", s.ID, func() { delete(f.servers, id) })
			writeJSON(w, http.StatusOK, schema.ServerDeleteResponse{Action: a.Action})
		default:
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed")
		}
	case r.Method == http.MethodPost && len(parts) == 4 && parts[0] == "servers" && parts[2] == "actions":
		id, _ := strconv.ParseInt(parts[1], 10, 64)
		s, ok := f.servers[id]
		if !ok {
			writeError(w, http.StatusNotFound, "not_found", "server with ID '"+parts[1]+"' not found")
			return
		}
		f.serverAction(w, s, parts[3], body)
	case r.Method == http.MethodGet && path == "/actions":
		var out schema.ActionListResponse
		for _, v := range q["id"] {
			id, _ := strconv.ParseInt(v, 10, 64)
			if a, ok := f.actions[id]; ok {
				f.step(a)
				out.Actions = append(out.Actions, a.Action)
			}
		}
		writeList(w, out, len(out.Actions))
	case r.Method == http.MethodGet && len(parts) == 2 && parts[0] == "actions":
		id, _ := strconv.ParseInt(parts[1], 10, 64)
		a, ok := f.actions[id]
		if !ok {
			writeError(w, http.StatusNotFound, "not_found", "action not found")
			return
		}
		f.step(a)
		writeJSON(w, http.StatusOK, schema.ActionGetResponse{Action: a.Action})
	case r.Method == http.MethodGet && path == "/ssh_keys":
		var out schema.SSHKeyListResponse
		for _, id := range slices.Sorted(maps.Keys(f.keys)) {
			k := f.keys[id]
			if fp := q.Get("fingerprint"); fp != "" && fp != k.Fingerprint {
				continue
			}
			if n := q.Get("name"); n != "" && n != k.Name {
				continue
			}
			out.SSHKeys = append(out.SSHKeys, keySchema(k))
		}
		writeList(w, out, len(out.SSHKeys))
	case r.Method == http.MethodPost && path == "/ssh_keys":
		var req schema.SSHKeyCreateRequest
		if err := json.Unmarshal(body, &req); err != nil {
			writeError(w, http.StatusBadRequest, "json_error", "invalid JSON")
			return
		}
		var labels map[string]string
		if req.Labels != nil {
			labels = *req.Labels
		}
		k, err := f.addKey(req.Name, req.PublicKey, labels)
		if err != nil {
			writeError(w, http.StatusUnprocessableEntity, "uniqueness_error", err.Error())
			return
		}
		writeJSON(w, http.StatusCreated, schema.SSHKeyCreateResponse{SSHKey: keySchema(k)})
	case r.Method == http.MethodGet && path == "/server_types":
		var out schema.ServerTypeListResponse
		for _, st := range f.types {
			if n := q.Get("name"); n != "" && n != st.Name {
				continue
			}
			out.ServerTypes = append(out.ServerTypes, f.typeSchema(st))
		}
		writeList(w, out, len(out.ServerTypes))
	case r.Method == http.MethodGet && path == "/locations":
		var out schema.LocationListResponse
		for i, l := range f.locations {
			if n := q.Get("name"); n != "" && n != l {
				continue
			}
			out.Locations = append(out.Locations, locationSchema(i, l))
		}
		writeList(w, out, len(out.Locations))
	case r.Method == http.MethodGet && path == "/pricing":
		p := schema.Pricing{Currency: f.Currency, VATRate: f.VATRate}
		for _, st := range f.types {
			p.ServerTypes = append(p.ServerTypes, schema.PricingServerType{ID: st.ID, Name: st.Name, Prices: typePrices(st)})
		}
		writeJSON(w, http.StatusOK, schema.PricingGetResponse{Pricing: p})
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	}
}

func (f *Fake) listServers(w http.ResponseWriter, q url.Values) {
	sel := q.Get("label_selector")
	var out schema.ServerListResponse
	for _, s := range f.sortedServers() {
		if n := q.Get("name"); n != "" && n != s.Name {
			continue
		}
		if st := q["status"]; len(st) > 0 && !slices.Contains(st, s.Status) {
			continue
		}
		if !matchLabels(sel, s.Labels) {
			continue
		}
		out.Servers = append(out.Servers, f.serverSchema(s))
	}
	writeList(w, out, len(out.Servers))
}

func (f *Fake) sortedServers() []*Server {
	var out []*Server
	for _, s := range f.servers {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// matchLabels is the label selector subset the client uses: terms
// "k=v", "k" and "!k" joined by commas.
func matchLabels(sel string, labels map[string]string) bool {
	if sel == "" {
		return true
	}
	for _, term := range strings.Split(sel, ",") {
		term = strings.TrimSpace(term)
		switch {
		case strings.HasPrefix(term, "!"):
			if _, ok := labels[term[1:]]; ok {
				return false
			}
		case strings.Contains(term, "="):
			k, v, _ := strings.Cut(term, "=")
			if labels[k] != v {
				return false
			}
		default:
			if _, ok := labels[term]; !ok {
				return false
			}
		}
	}
	return true
}

func (f *Fake) createServer(w http.ResponseWriter, body []byte) {
	var req schema.ServerCreateRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "json_error", "invalid JSON: "+err.Error())
		return
	}
	if req.Name == "" {
		writeInvalid(w, "name", "is required")
		return
	}
	if req.Image.Name == "" && req.Image.ID == 0 {
		writeInvalid(w, "image", "is required")
		return
	}
	i := slices.IndexFunc(f.types, func(st ServerType) bool { return st.Name == req.ServerType.Name || st.ID == req.ServerType.ID })
	if i < 0 {
		writeInvalid(w, "server_type", "server type not found")
		return
	}
	loc := req.Location
	if loc == "" {
		loc = f.locations[0]
	}
	if !slices.Contains(f.locations, loc) {
		writeInvalid(w, "location", "location not found")
		return
	}
	if _, ok := f.types[i].Prices[loc]; !ok {
		writeError(w, http.StatusPreconditionFailed, "resource_unavailable", "server type "+f.types[i].Name+" is unavailable in "+loc)
		return
	}
	for _, s := range f.servers {
		if s.Name == req.Name {
			writeError(w, http.StatusConflict, "uniqueness_error", "server name is already used")
			return
		}
	}
	for _, k := range req.SSHKeys {
		if _, ok := f.keys[k]; !ok {
			writeInvalid(w, "ssh_keys", fmt.Sprintf("ssh key %d not found", k))
			return
		}
	}
	start := req.StartAfterCreate == nil || *req.StartAfterCreate
	addr := f.address
	if addr == "" {
		addr = "127.0.0.1"
	}
	s := &Server{
		ID: f.id(), Name: req.Name, Status: "initializing", Type: f.types[i].Name, Location: loc,
		Image: req.Image.Name, IPv4: addr, IPv6: "2001:db8:0:" + strconv.Itoa(len(f.servers)+1) + "::/64",
		SSHKeys: slices.Clone(req.SSHKeys), Started: start,
		Created: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC),
	}
	if req.Labels != nil {
		s.Labels = map[string]string{}
		for k, v := range *req.Labels {
			s.Labels[k] = v
		}
	}
	f.servers[s.ID] = s
	a := f.newAction("create_server", s.ID, func() {
		if start {
			s.Status = "running"
		} else {
			s.Status = "off"
		}
	})
	resp := schema.ServerCreateResponse{Server: f.serverSchema(s), Action: a.Action, NextActions: []schema.Action{}}
	if start {
		resp.NextActions = append(resp.NextActions, f.newAction("start_server", s.ID, nil).Action)
	}
	if len(req.SSHKeys) == 0 {
		pw := "fake-root-password"
		resp.RootPassword = &pw
	}
	writeJSON(w, http.StatusCreated, resp)
}

func (f *Fake) serverAction(w http.ResponseWriter, s *Server, name string, body []byte) {
	switch name {
	case "enable_rescue":
		var req schema.ServerActionEnableRescueRequest
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				writeError(w, http.StatusBadRequest, "json_error", "invalid JSON")
				return
			}
		}
		if req.Type != nil && *req.Type != "linux64" {
			writeInvalid(w, "type", "rescue type must be linux64")
			return
		}
		for _, k := range req.SSHKeys {
			if _, ok := f.keys[k]; !ok {
				writeInvalid(w, "ssh_keys", fmt.Sprintf("ssh key %d not found", k))
				return
			}
		}
		a := f.newAction("enable_rescue", s.ID, func() { s.Rescue = true; s.SSHKeys = req.SSHKeys })
		writeJSON(w, http.StatusCreated, schema.ServerActionEnableRescueResponse{Action: a.Action})
	case "poweron":
		a := f.newAction("start_server", s.ID, func() { s.Status = "running" })
		writeJSON(w, http.StatusCreated, schema.ServerActionPoweronResponse{Action: a.Action})
	case "reset":
		if s.Status != "running" {
			writeError(w, http.StatusConflict, "server_not_running", "server is not running")
			return
		}
		a := f.newAction("reset_server", s.ID, func() { s.Status = "running" })
		writeJSON(w, http.StatusCreated, schema.ServerActionResetResponse{Action: a.Action})
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such action")
	}
}

// newAction starts an action on a server; done runs when it succeeds.
func (f *Fake) newAction(command string, server int64, done func()) *action {
	a := &action{steps: f.Steps, done: done}
	if a.steps <= 0 {
		a.steps = 2
	}
	a.Action = schema.Action{
		ID: f.id(), Status: "running", Command: command, Progress: 0,
		Started:   time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC),
		Resources: []schema.ActionResourceReference{{ID: server, Type: "server"}},
	}
	if e, ok := f.failCmd[command]; ok {
		a.fail = &e
		delete(f.failCmd, command)
	}
	f.actions[a.ID] = a
	return a
}

// step advances a running action by one poll.
func (f *Fake) step(a *action) {
	if a.Status != "running" {
		return
	}
	a.steps--
	if a.steps > 0 {
		a.Progress = min(99, a.Progress+100/(a.steps+1))
		return
	}
	fin := time.Date(2026, 12, 2, 9, 1, 0, 0, time.UTC)
	a.Finished = &fin
	if a.fail != nil {
		a.Status = "error"
		a.Error = a.fail
		return
	}
	a.Status = "success"
	a.Progress = 100
	if a.done != nil {
		a.done()
	}
}

func (f *Fake) addKey(name, authorizedKey string, labels map[string]string) (*Key, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey))
	if err != nil {
		return nil, fmt.Errorf("public key is not valid: %v", err)
	}
	fp := MD5Fingerprint(pub)
	for _, k := range f.keys {
		if k.Name == name {
			return nil, fmt.Errorf("SSH key with the same name already exists")
		}
		if k.Fingerprint == fp {
			return nil, fmt.Errorf("SSH key with the same fingerprint already exists")
		}
	}
	k := &Key{ID: f.id(), Name: name, Fingerprint: fp, PublicKey: strings.TrimSpace(authorizedKey), Labels: labels}
	f.keys[k.ID] = k
	return k, nil
}

// MD5Fingerprint is the fingerprint the API gives SSH keys by.
func MD5Fingerprint(k ssh.PublicKey) string {
	sum := md5.Sum(k.Marshal())
	hex := make([]string, len(sum))
	for i, b := range sum {
		hex[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(hex, ":")
}

func (f *Fake) typeSchema(st ServerType) schema.ServerType {
	out := schema.ServerType{
		ID: st.ID, Name: st.Name, Description: strings.ToUpper(st.Name), Category: "shared",
		Cores: st.Cores, Memory: st.Memory, Disk: st.Disk, StorageType: "local", CPUType: "shared",
		Architecture: st.Arch, Prices: typePrices(st),
	}
	for i, l := range f.locations {
		if _, ok := st.Prices[l]; ok {
			out.Locations = append(out.Locations, schema.ServerTypeLocation{ID: int64(i + 1), Name: l, Available: true, Recommended: true})
		}
	}
	return out
}

func typePrices(st ServerType) []schema.PricingServerTypePrice {
	var locs []string
	for l := range st.Prices {
		locs = append(locs, l)
	}
	slices.Sort(locs)
	var out []schema.PricingServerTypePrice
	for _, l := range locs {
		p := st.Prices[l]
		out = append(out, schema.PricingServerTypePrice{
			Location:          l,
			PriceHourly:       schema.Price{Net: p.HourlyNet, Gross: p.HourlyGross},
			PriceMonthly:      schema.Price{Net: p.MonthlyNet, Gross: p.MonthlyGross},
			IncludedTraffic:   20 << 40,
			PricePerTBTraffic: schema.Price{Net: "1.0000", Gross: "1.1900"},
		})
	}
	return out
}

func locationSchema(i int, name string) schema.Location {
	city := map[string]string{"fsn1": "Falkenstein", "nbg1": "Nuremberg", "hel1": "Helsinki"}[name]
	country := "DE"
	if name == "hel1" {
		country = "FI"
	}
	return schema.Location{ID: int64(i + 1), Name: name, Description: city + " DC Park 1", Country: country, City: city, NetworkZone: "eu-central"}
}

func keySchema(k *Key) schema.SSHKey {
	labels := k.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return schema.SSHKey{ID: k.ID, Name: k.Name, Fingerprint: k.Fingerprint, PublicKey: k.PublicKey, Labels: labels,
		Created: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
}

func (f *Fake) serverSchema(s *Server) schema.Server {
	i := slices.IndexFunc(f.types, func(st ServerType) bool { return st.Name == s.Type })
	var st schema.ServerType
	if i >= 0 {
		st = f.typeSchema(f.types[i])
	} else {
		st = schema.ServerType{Name: s.Type}
	}
	li := slices.Index(f.locations, s.Location)
	labels := s.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	out := schema.Server{
		ID: s.ID, Name: s.Name, Status: s.Status, Created: s.Created,
		PublicNet: schema.ServerPublicNet{
			IPv4:        schema.ServerPublicNetIPv4{ID: s.ID + 1000, IP: s.IPv4, DNSPtr: "static.example"},
			IPv6:        schema.ServerPublicNetIPv6{ID: s.ID + 2000, IP: s.IPv6, DNSPtr: []schema.ServerPublicNetIPv6DNSPtr{}},
			FloatingIPs: []int64{},
			Firewalls:   []schema.ServerFirewall{},
		},
		PrivateNet:      []schema.ServerPrivateNet{},
		ServerType:      st,
		IncludedTraffic: 20 << 40,
		RescueEnabled:   s.Rescue,
		Location:        locationSchema(li, s.Location),
		Labels:          labels,
		Volumes:         []int64{},
		PrimaryDiskSize: st.Disk,
		LoadBalancers:   []int64{},
	}
	if s.Image != "" {
		out.Image = &schema.Image{ID: 1, Type: "system", Status: "available", Name: &s.Image, OSFlavor: "debian", Architecture: st.Architecture}
	}
	return out
}

func writeList(w http.ResponseWriter, v any, n int) {
	// The list body and the pagination meta, in one object.
	b, _ := json.Marshal(v)
	var m map[string]json.RawMessage
	json.Unmarshal(b, &m)
	meta, _ := json.Marshal(schema.MetaResponse{Meta: schema.Meta{Pagination: &schema.MetaPagination{Page: 1, PerPage: 50, LastPage: 1, TotalEntries: n}}})
	var mm map[string]json.RawMessage
	json.Unmarshal(meta, &mm)
	m["meta"] = mm["meta"]
	for k, v := range m {
		if string(v) == "null" {
			m[k] = json.RawMessage("[]")
		}
	}
	writeJSON(w, http.StatusOK, m)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, schema.ErrorResponse{Error: schema.Error{Code: code, Message: message}})
}

func writeInvalid(w http.ResponseWriter, field, msg string) {
	details, _ := json.Marshal(map[string]any{"fields": []map[string]any{{"name": field, "messages": []string{msg}}}})
	writeJSON(w, http.StatusBadRequest, schema.ErrorResponse{Error: schema.Error{Code: "invalid_input", Message: "invalid input in field '" + field + "'", DetailsRaw: details}})
}
