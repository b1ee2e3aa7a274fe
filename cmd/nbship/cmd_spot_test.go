package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/metal/metaltest"
)

const (
	pkToken   = "tok-Cmd9SECRETq4w"
	pkProject = "7e1f3c2a-9b8d-4e6f-a1b2-c3d4e5f60718"
	pkReq     = "5a7e1111-2222-4333-8444-555566667777"
	pkArm     = "de000000-0000-4000-8000-00000000000a"
	pkX86     = "de000000-0000-4000-8000-00000000000b"
)

func init() {
	// Keep the retries and the reboot wait fast.
	packetBackoff = time.Millisecond
	deviceProbeInterval = 10 * time.Millisecond
}

// pkResult is what one nbship run printed and returned.
type pkResult struct {
	stdout, stderr string
	code           int
}

// pkServer is a fake API with two builders, one spot request and prices.
func pkServer(t *testing.T) *metaltest.Server {
	t.Helper()
	srv := metaltest.NewServer(t, pkToken, pkProject)
	srv.AddDevice(metaltest.Device{ID: pkArm, Hostname: "arm1", State: "active", Plan: "c2.large.arm", Metro: "da", Facility: "dfw2", PublicIP: "147.75.0.10", PrivateIP: "10.0.0.10", Tags: []string{"hydra", "arm"}})
	srv.AddDevice(metaltest.Device{ID: pkX86, Hostname: "x86a", State: "active", Plan: "m2.xlarge.x86", Metro: "da", Facility: "dfw2", PublicIP: "147.75.0.11", Tags: []string{"hydra"}})
	srv.AddRequest(metaltest.Request{ID: pkReq, Plan: "c2.large.arm", Metro: "da", Min: 1, Max: 2, MaxBid: 0.5, Hostname: "arm", IPXEURL: "http://netboot.example/hydra-c2.large.arm/netboot.ipxe", Tags: []string{"hydra"}, DeviceIDs: []string{pkArm}})
	srv.SetPrice(false, "da", "c2.large.arm", 0.3)
	srv.SetPrice(false, "sv", "c2.large.arm", 0.25)
	srv.SetPrice(false, "da", "m2.xlarge.x86", 0.4)
	srv.SetPrice(true, "dfw2", "c2.large.arm", 0.35)
	srv.SetPrice(true, "ewr1", "c2.large.arm", 0.2)
	return srv
}

// runPacket runs nbship with the credentials in the environment and checks
// that the token shows up in none of its output.
func runPacket(t *testing.T, srv *metaltest.Server, vars map[string]string, stdin io.Reader, args ...string) pkResult {
	t.Helper()
	base := map[string]string{"PACKET_AUTH_TOKEN": pkToken, "PACKET_PROJECT_ID": pkProject}
	if srv != nil {
		base["PACKET_API_URL"] = srv.APIURL()
	}
	return runSecret(t, base, vars, stdin, "PACKET_AUTH_TOKEN", []string{pkToken}, args...)
}

// runSecret runs nbship in this process with the environment base and
// vars over it, and stdin (nil: "yes\n"). It fails t if the output shows
// one of the secrets or the value of the variable secretVar.
func runSecret(t *testing.T, base, vars map[string]string, stdin io.Reader, secretVar string, secrets []string, args ...string) pkResult {
	t.Helper()
	all := maps.Clone(base)
	maps.Copy(all, vars)
	if stdin == nil {
		stdin = strings.NewReader("yes\n")
	}
	var out, errb bytes.Buffer
	e := &env{stdin: stdin, stdout: &out, stderr: &errb, getenv: func(k string) string { return all[k] }}
	code := report(&errb, run(context.Background(), e, args))
	r := pkResult{stdout: out.String(), stderr: errb.String(), code: code}
	for _, secret := range append(secrets, all[secretVar]) {
		if secret != "" && (strings.Contains(r.stdout, secret) || strings.Contains(r.stderr, secret)) {
			t.Errorf("nbship %s printed a secret:\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.stdout, r.stderr)
		}
	}
	return r
}

func (r pkResult) check(t *testing.T, args string, code int, stdout, stderr []string) {
	t.Helper()
	if r.code != code {
		t.Errorf("nbship %s: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, code, r.stdout, r.stderr)
	}
	for _, s := range stdout {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("nbship %s: stdout = %q, want it to contain %q", args, r.stdout, s)
		}
	}
	for _, s := range stderr {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("nbship %s: stderr = %q, want it to contain %q", args, r.stderr, s)
		}
	}
}

func TestSpotCreate(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "builders.conf")
	os.WriteFile(cfgFile, []byte("baseURL http://netboot.example/boot\n"), 0o600)
	userdata := filepath.Join(dir, "userdata")
	os.WriteFile(userdata, []byte("#!ipxe\necho hi\n"), 0o600)
	base := []string{"spot", "create", "--plan", "c2.large.arm", "--max-bid", "0.5", "--min", "1", "--max", "3", "--hostname", "arm-builder", "--tag", "hydra", "--tag", "arm"}
	ipxe := []string{"--ipxe-url", "http://netboot.example/hydra-c2.large.arm/netboot.ipxe"}

	tests := []struct {
		name      string
		args      []string
		stdin     io.Reader
		code      int
		stdout    []string
		stderr    []string
		wantPOST  bool
		wantCalls int
		check     func(t *testing.T, b metaltest.CreateBody)
	}{
		{
			name: "yes creates", args: append(append(slices.Clone(base), ipxe...), "--metro", "da", "--always-pxe", "--userdata", userdata, "--yes"),
			stdout:   []string{"spot request 5a7e0000-0000-4000-8000-000000000001 created: 1-3 × c2.large.arm in da, max bid $0.50/h each"},
			stderr:   []string{"c2.large.arm spot price now: da $0.30/h", "worst case: 3 × $0.50 max bid = $1.50/h ($36.00/day); at the current price: $0.90/h"},
			wantPOST: true, wantCalls: 2,
			check: func(t *testing.T, b metaltest.CreateBody) {
				if b.Min != 1 || b.Max != 3 || b.Metro != "da" || b.Facilities != nil || b.MaxBid != 0.5 ||
					b.P.OS != "custom_ipxe" || b.P.Plan != "c2.large.arm" || b.P.IPXE != ipxe[1] || !b.P.AlwaysPXE ||
					!slices.Equal(b.P.Tags, []string{"hydra", "arm"}) || b.P.Hostname != "arm-builder" || b.P.UserData != "#!ipxe\necho hi\n" {
					t.Errorf("create body = %+v", b)
				}
			},
		},
		{
			name: "facilities and an instance", args: append(slices.Clone(base), "--facility", "dfw2", "--facility", "ewr1", "--instance", "c2.large.arm", "--base-url", "http://netboot.example/pxe/", "--yes"),
			stderr:   []string{"dfw2 $0.35/h, ewr1 $0.20/h", "at the current price: $0.60/h"},
			wantPOST: true, wantCalls: 2,
			check: func(t *testing.T, b metaltest.CreateBody) {
				if b.Metro != "" || !slices.Equal(b.Facilities, []string{"dfw2", "ewr1"}) || b.P.IPXE != "http://netboot.example/pxe/hydra-c2.large.arm/netboot.ipxe" || b.P.AlwaysPXE {
					t.Errorf("create body = %+v", b)
				}
			},
		},
		{
			name: "base URL from the config file", args: append(slices.Clone(base), "--metro", "da", "--instance", "c2.large.arm", "--config", cfgFile, "--yes"),
			wantPOST: true, wantCalls: 2,
			check: func(t *testing.T, b metaltest.CreateBody) {
				if b.P.IPXE != "http://netboot.example/boot/hydra-c2.large.arm/netboot.ipxe" {
					t.Errorf("ipxe_script_url = %q, want it under the config's baseURL", b.P.IPXE)
				}
			},
		},
		{
			name: "bid below the market", args: append(append(slices.Clone(base), ipxe...), "--metro", "da", "--max-bid", "0.1", "--yes"),
			stderr:   []string{"max bid is below the current price"},
			wantPOST: true, wantCalls: 2,
		},
		{
			name: "no --yes and no terminal", args: append(append(slices.Clone(base), ipxe...), "--metro", "da"),
			stdin: strings.NewReader("yes\n"), code: 1,
			stderr: []string{"not creating a spot request without confirmation", "hint: ", "--yes"},
		},
		{
			name: "dry run", args: append(append(slices.Clone(base), ipxe...), "--metro", "da", "--dry-run"),
			stdout: []string{`"operating_system":"custom_ipxe"`, `"max_bid_price":0.5`, `"devices_max":3`, `"ipxe_script_url":"http://netboot.example/hydra-c2.large.arm/netboot.ipxe"`},
			stderr: []string{"dry run", "nothing sent"},
		},
		{
			name: "no price for the plan there", args: append(append(slices.Clone(base), ipxe...), "--metro", "am", "--yes"),
			code: 1, wantCalls: 1,
			stderr: []string{"plan c2.large.arm has no spot price in am", "nbship spot prices --plan c2.large.arm"},
		},
		{"no plan", []string{"spot", "create", "--metro", "da", "--max-bid", "1", "--hostname", "h", "--ipxe-url", ipxe[1], "--yes"}, nil, 2, nil, []string{"no plan"}, false, 0, nil},
		{"metro and facility", append(append(slices.Clone(base), ipxe...), "--metro", "da", "--facility", "dfw2", "--yes"), nil, 2, nil, []string{"not both"}, false, 0, nil},
		{"ipxe and instance", append(append(slices.Clone(base), ipxe...), "--metro", "da", "--instance", "x", "--yes"), nil, 2, nil, []string{"not both"}, false, 0, nil},
		{"no ipxe", append(slices.Clone(base), "--metro", "da", "--yes"), nil, 2, nil, []string{"no iPXE script", "nbship image url"}, false, 0, nil},
		{"instance without base", append(slices.Clone(base), "--metro", "da", "--instance", "c2.large.arm", "--yes"), nil, 2, nil, []string{"--instance needs --base-url"}, false, 0, nil},
		{"bad instance", append(slices.Clone(base), "--metro", "da", "--instance", "../x", "--base-url", "http://n/", "--yes"), nil, 2, nil, []string{"instance name"}, false, 0, nil},
		{"min over max", append(append(slices.Clone(base), ipxe...), "--metro", "da", "--min", "5", "--yes"), nil, 2, nil, []string{"more than max"}, false, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := pkServer(t)
			r := runPacket(t, srv, nil, tt.stdin, tt.args...)
			r.check(t, strings.Join(tt.args, " "), tt.code, tt.stdout, tt.stderr)
			calls := srv.Calls()
			if len(calls) != tt.wantCalls {
				t.Errorf("requests = %d, want %d: %+v", len(calls), tt.wantCalls, calls)
			}
			var post *metaltest.Call
			for i, c := range calls {
				if c.Method == "POST" {
					post = &calls[i]
				}
			}
			if (post != nil) != tt.wantPOST {
				t.Fatalf("POST sent = %v, want %v", post != nil, tt.wantPOST)
			}
			if post != nil {
				if post.Path != "projects/"+pkProject+"/spot-market-requests" || post.Token != pkToken {
					t.Errorf("POST %s (token ok %v), want projects/%s/spot-market-requests with the token", post.Path, post.Token == pkToken, pkProject)
				}
				var b metaltest.CreateBody
				if err := json.Unmarshal(post.Body, &b); err != nil {
					t.Fatal(err)
				}
				if tt.check != nil {
					tt.check(t, b)
				}
			}
			if tt.name == "dry run" {
				var b metaltest.CreateBody
				if err := json.Unmarshal([]byte(r.stdout), &b); err != nil || b.P.Plan != "c2.large.arm" {
					t.Errorf("dry run stdout is not the body: %v\n%s", err, r.stdout)
				}
			}
		})
	}
}

func TestSpotConfirm(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"yes\n", true},
		{"  yes \r\n", true},
		{"yes", true},
		{"y\n", false},
		{"YES\n", false},
		{"no\nyes\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got, err := spotConfirm(strings.NewReader(tt.in)); got != tt.want || err != nil {
			t.Errorf("spotConfirm(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestSpotIPXEURL(t *testing.T) {
	tests := []struct{ base, instance, want string }{
		{"http://netboot.example/", "c2.large.arm", "http://netboot.example/hydra-c2.large.arm/netboot.ipxe"},
		{"http://netboot.example", "m2.xlarge.x86", "http://netboot.example/hydra-m2.xlarge.x86/netboot.ipxe"},
		{"https://n.example/pxe", "c2.large.arm", "https://n.example/pxe/hydra-c2.large.arm/netboot.ipxe"},
		{"netboot.example", "c2.large.arm", ""},
		{"http://n/", "a/b", ""},
		{"http://n/", "..", ""},
		{"http://n/?x=1", "a", ""},
	}
	for _, tt := range tests {
		got, err := spotIPXEURL(tt.base, tt.instance)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("spotIPXEURL(%q, %q) = %q, %v, want %q", tt.base, tt.instance, got, err, tt.want)
		}
	}
}

func TestSpotListGetCancel(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
		check  func(t *testing.T, srv *metaltest.Server)
	}{
		{name: "list", args: []string{"spot", "list"}, stdout: []string{"ID", "MAX BID", pkReq, "c2.large.arm", "da", "$0.50/h"}},
		{name: "list json", args: []string{"spot", "list", "--json"}, stdout: []string{`"id":"` + pkReq + `"`, `"max":2`}},
		{name: "get", args: []string{"spot", "get", pkReq}, stdout: []string{"max bid", "$0.50/h per device", "1 to 2, 1 now", pkArm, "arm1", "147.75.0.10"}},
		{name: "get json", args: []string{"spot", "get", "--json", pkReq}, stdout: []string{`"hostname":"arm1"`, `"public_ipv4":"147.75.0.10"`}},
		{name: "get not a UUID", args: []string{"spot", "get", "arm1"}, code: 1, stderr: []string{`spot request ID "arm1" is not a UUID`}},
		{name: "get unknown", args: []string{"spot", "get", "5a7e1111-2222-4333-8444-000000000000"}, code: 1, stderr: []string{"not found (404 Not Found)", "hint: check the ID"}},
		{name: "get without ID", args: []string{"spot", "get"}, code: 2, stderr: []string{"want the spot request ID"}},
		{
			name: "cancel", args: []string{"spot", "cancel", pkReq}, stdout: []string{"cancelled; its devices keep running"},
			check: func(t *testing.T, srv *metaltest.Server) {
				last := srv.Calls()[len(srv.Calls())-1]
				if last.Method != "DELETE" || last.Path != "spot-market-requests/"+pkReq || strings.Contains(string(last.Body), "force_termination") {
					t.Errorf("cancel sent %s %s %s, want DELETE without force_termination", last.Method, last.Path, last.Body)
				}
				if srv.HasRequest(pkReq) {
					t.Errorf("request still there after cancel")
				}
			},
		},
		{
			name: "cancel --force", args: []string{"spot", "cancel", "--force", pkReq}, stdout: []string{"its devices are being terminated"},
			check: func(t *testing.T, srv *metaltest.Server) {
				last := srv.Calls()[len(srv.Calls())-1]
				var b map[string]any
				json.Unmarshal(last.Body, &b)
				if last.Method != "DELETE" || b["force_termination"] != true {
					t.Errorf("cancel --force sent %s %s, want DELETE with force_termination true", last.Method, last.Body)
				}
			},
		},
		{name: "prices", args: []string{"spot", "prices", "--plan", "c2.large.arm"}, stdout: []string{"METRO", "da     c2.large.arm  $0.30/h", "sv     c2.large.arm  $0.25/h"}},
		{name: "prices by facility json", args: []string{"spot", "prices", "--by", "facility", "--json"}, stdout: []string{`"location":"ewr1"`, `"price":0.2`}},
		{name: "prices of nothing", args: []string{"spot", "prices", "--plan", "t1.small.x86"}, code: 1, stderr: []string{"no metro has a spot price for plan t1.small.x86"}},
		{name: "prices bad --by", args: []string{"spot", "prices", "--by", "city"}, code: 2},
		{name: "unknown subcommand", args: []string{"spot", "bid"}, code: 2, stderr: []string{`unknown subcommand "bid"`}},
		{name: "help", args: []string{"spot", "help"}, stdout: []string{"create", "prices"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := pkServer(t)
			r := runPacket(t, srv, nil, nil, tt.args...)
			r.check(t, strings.Join(tt.args, " "), tt.code, tt.stdout, tt.stderr)
			if tt.check != nil {
				tt.check(t, srv)
			}
		})
	}
}

// TestPacketErrors runs one command against every kind of failure.
func TestPacketErrors(t *testing.T) {
	boom := metaltest.Failure{Status: 500, Messages: []string{"internal error"}}
	tests := []struct {
		name   string
		fail   []metaltest.Failure
		code   int
		stderr []string
		calls  int
	}{
		{"401", []metaltest.Failure{{Status: 401, Messages: []string{"Invalid authentication token"}}}, 1, []string{"token rejected (401 Unauthorized)", "Invalid authentication token", "hint: check PACKET_AUTH_TOKEN"}, 1},
		{"403", []metaltest.Failure{{Status: 403, Messages: []string{"You do not have access to this project"}}}, 1, []string{"token rejected (403 Forbidden)", "hint: the token is known but may not do this"}, 1},
		{"404", []metaltest.Failure{{Status: 404, Messages: []string{"Not found"}}}, 1, []string{"not found (404 Not Found): GET projects/" + pkProject + "/devices"}, 1},
		{"422", []metaltest.Failure{{Status: 422, Messages: []string{"include must be one of plan, metro"}}}, 1, []string{"the API refused GET projects/" + pkProject + "/devices (422 Unprocessable Entity): include must be one of plan, metro"}, 1},
		{"429 then success", []metaltest.Failure{{Status: 429, Messages: []string{"Rate limit exceeded"}, RetryAfter: "0"}}, 0, nil, 2},
		{"500 four times", []metaltest.Failure{boom, boom, boom, boom}, 1, []string{"500 Internal Server Error on all 4 tries; gave up: internal error", "hint: the API is failing"}, 4},
		{"500 three times then success", []metaltest.Failure{boom, boom, boom}, 0, nil, 4},
		{"an error echoing the token", []metaltest.Failure{{Status: 422, Messages: []string{"token " + pkToken + " has expired"}}}, 1, []string{"token [token] has expired"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := pkServer(t)
			srv.Fail(tt.fail...)
			r := runPacket(t, srv, nil, nil, "device", "list")
			r.check(t, "device list", tt.code, nil, tt.stderr)
			if tt.code == 0 && !strings.Contains(r.stdout, "arm1") {
				t.Errorf("device list after retries: stdout = %q, want the devices", r.stdout)
			}
			if n := len(srv.Calls()); n != tt.calls {
				t.Errorf("device list: requests = %d, want %d", n, tt.calls)
			}
		})
	}
}

func TestPacketCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.conf", "packetKey "+pkToken+"\npacketProjectId "+pkProject+"\n")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + ln.Addr().String() + "/metal/v1"
	ln.Close()
	wrong := write("wrong.conf", "packetKey tok-FILEwrongSECRET\npacketProjectId 00000000-0000-4000-8000-000000000000\n")
	tests := []struct {
		name   string
		vars   map[string]string
		args   []string
		code   int
		stderr []string
	}{
		{"environment", nil, nil, 0, nil},
		{"config file", map[string]string{"PACKET_AUTH_TOKEN": "", "PACKET_PROJECT_ID": ""}, []string{"--config", good}, 0, nil},
		{"environment wins over the file", nil, []string{"--config", wrong}, 0, nil},
		{"wrong token in the file", map[string]string{"PACKET_AUTH_TOKEN": "", "PACKET_PROJECT_ID": ""}, []string{"--config", wrong}, 1, []string{"token rejected (401"}},
		{"no token", map[string]string{"PACKET_AUTH_TOKEN": ""}, nil, 1, []string{"no API token", "hint: export PACKET_AUTH_TOKEN"}},
		{"no project", map[string]string{"PACKET_PROJECT_ID": ""}, nil, 1, []string{"no project ID", "hint: export PACKET_PROJECT_ID"}},
		{"project not a UUID", map[string]string{"PACKET_PROJECT_ID": "nix-builders"}, nil, 1, []string{`project ID "nix-builders" is not a UUID`}},
		{"missing config file", nil, []string{"--config", filepath.Join(dir, "nope.conf")}, 1, []string{"config: "}},
		{"bad API URL", nil, []string{"--api-url", "api.example"}, 1, []string{"not an http(s) URL"}},
		{"API unreachable", nil, []string{"--api-url", closedURL}, 1, []string{"packet: gave up after 4 tries: Get ", "connection refused", "hint: check --api-url"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := pkServer(t)
			args := append([]string{"device", "list"}, tt.args...)
			r := runPacket(t, srv, tt.vars, nil, args...)
			r.check(t, strings.Join(args, " "), tt.code, nil, tt.stderr)
			for _, secret := range []string{"tok-FILEwrongSECRET"} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("output contains the config file's token")
				}
			}
		})
	}
}
