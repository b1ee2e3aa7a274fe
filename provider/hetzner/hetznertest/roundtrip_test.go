package hetznertest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/hetznercloud/hcloud-go/v2/hcloud"
	"github.com/hetznercloud/hcloud-go/v2/hcloud/schema"
)

const token = "fake-token"

const pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl operator@laptop"

// TestWithHcloudGo drives every endpoint the provider uses with hcloud-go
// itself and checks what it decoded.
func TestWithHcloudGo(t *testing.T) {
	f := New(t, token)
	f.SetAddress("198.51.100.9")
	ctx := context.Background()
	c := hcloud.NewClient(hcloud.WithToken(token), hcloud.WithEndpoint(f.APIURL()),
		hcloud.WithPollOpts(hcloud.PollOpts{BackoffFunc: hcloud.ConstantBackoff(time.Millisecond)}))

	st, _, err := c.ServerType.GetByName(ctx, "cax21")
	if err != nil || st == nil || st.Architecture != hcloud.ArchitectureARM || st.Cores != 4 || len(st.Pricings) != 3 || st.Pricings[0].Hourly.Gross != "0.0124" {
		t.Fatalf("ServerType.GetByName(cax21) = %+v, %v", st, err)
	}
	if all, err := c.ServerType.All(ctx); err != nil || len(all) != 2 {
		t.Errorf("ServerType.All = %d types, %v, want 2", len(all), err)
	}
	loc, _, err := c.Location.GetByName(ctx, "hel1")
	if err != nil || loc == nil || loc.Country != "FI" {
		t.Errorf("Location.GetByName(hel1) = %+v, %v", loc, err)
	}
	if none, _, err := c.Location.GetByName(ctx, "mars1"); none != nil || err != nil {
		t.Errorf("Location.GetByName(mars1) = %+v, %v; want nil, nil", none, err)
	}

	key, _, err := c.SSHKey.Create(ctx, hcloud.SSHKeyCreateOpts{Name: "k", PublicKey: pub, Labels: map[string]string{"nbship": "key"}})
	if err != nil {
		t.Fatal(err)
	}
	found, _, err := c.SSHKey.GetByFingerprint(ctx, key.Fingerprint)
	if err != nil || found == nil || found.ID != key.ID || found.Labels["nbship"] != "key" {
		t.Errorf("SSHKey.GetByFingerprint = %+v, %v, want key %d", found, err, key.ID)
	}

	res, _, err := c.Server.Create(ctx, hcloud.ServerCreateOpts{
		Name: "b1", ServerType: &hcloud.ServerType{Name: "cax21"}, Image: &hcloud.Image{Name: "debian-12"},
		SSHKeys: []*hcloud.SSHKey{key}, Location: &hcloud.Location{Name: "fsn1"}, StartAfterCreate: hcloud.Ptr(true),
		Labels: map[string]string{"nbship": "builder"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Server.Status != hcloud.ServerStatusInitializing || res.Action.Command != "create_server" || len(res.NextActions) != 1 {
		t.Errorf("Server.Create = %+v, action %+v, next %d", res.Server, res.Action, len(res.NextActions))
	}
	var updates []int
	err = c.Action.WaitForFunc(ctx, func(a *hcloud.Action) error {
		if a.ID == res.Action.ID {
			updates = append(updates, a.Progress)
		}
		return nil
	}, append([]*hcloud.Action{res.Action}, res.NextActions...)...)
	if err != nil || len(updates) != 2 || updates[0] != 50 || updates[1] != 100 {
		t.Errorf("WaitForFunc = %v, progress %v, want 50 then 100", err, updates)
	}
	srv, _, err := c.Server.GetByID(ctx, res.Server.ID)
	if err != nil || srv.Status != hcloud.ServerStatusRunning || srv.PublicNet.IPv4.IP.String() != "198.51.100.9" ||
		srv.ServerType.Name != "cax21" || srv.Location.Name != "fsn1" || srv.Labels["nbship"] != "builder" || srv.PublicNet.IPv6.Network == nil {
		t.Errorf("Server.GetByID = %+v, %v", srv, err)
	}

	rr, _, err := c.Server.EnableRescue(ctx, srv, hcloud.ServerEnableRescueOpts{Type: hcloud.ServerRescueTypeLinux64, SSHKeys: []*hcloud.SSHKey{key}})
	if err != nil || c.Action.WaitFor(ctx, rr.Action) != nil {
		t.Fatalf("EnableRescue = %+v, %v", rr, err)
	}
	ra, _, err := c.Server.Reset(ctx, srv)
	if err != nil || c.Action.WaitFor(ctx, ra) != nil {
		t.Fatalf("Reset = %+v, %v", ra, err)
	}
	pa, _, err := c.Server.Poweron(ctx, srv)
	if err != nil || c.Action.WaitFor(ctx, pa) != nil {
		t.Fatalf("Poweron = %+v, %v", pa, err)
	}
	if got, _, _ := c.Server.GetByID(ctx, srv.ID); !got.RescueEnabled {
		t.Errorf("after enable_rescue: rescue_enabled = false")
	}
	single, _, err := c.Action.GetByID(ctx, pa.ID)
	if err != nil || single.Status != hcloud.ActionStatusSuccess {
		t.Errorf("Action.GetByID = %+v, %v", single, err)
	}

	f.AddServer(Server{Name: "other", Status: "running", Type: "cx22", Location: "nbg1", IPv4: "192.0.2.1"})
	mine, err := c.Server.AllWithOpts(ctx, hcloud.ServerListOpts{ListOpts: hcloud.ListOpts{LabelSelector: "nbship=builder"}})
	if err != nil || len(mine) != 1 || mine[0].ID != srv.ID {
		t.Errorf("Server.AllWithOpts(nbship=builder) = %d servers, %v, want the one", len(mine), err)
	}
	if all, err := c.Server.All(ctx); err != nil || len(all) != 2 {
		t.Errorf("Server.All = %d servers, %v, want 2", len(all), err)
	}

	p, _, err := c.Pricing.Get(ctx)
	if err != nil || p.Currency != "EUR" || len(p.ServerTypes) != 2 || p.ServerTypes[0].Pricings[0].Monthly.Gross != "4.5101" {
		t.Errorf("Pricing.Get = %+v, %v", p, err)
	}

	f.FailAction("reset", "action_failed", "no")
	ra, _, err = c.Server.Reset(ctx, srv)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Action.WaitFor(ctx, ra)
	if ae, ok := err.(hcloud.ActionError); !ok || ae.Code != "action_failed" || ae.Message != "no" {
		t.Errorf("WaitFor(failing reset) = %#v, want an hcloud.ActionError", err)
	}

	del, _, err := c.Server.DeleteWithResult(ctx, srv)
	if err != nil || c.Action.WaitFor(ctx, del.Action) != nil {
		t.Fatalf("DeleteWithResult = %+v, %v", del, err)
	}
	if gone, _, err := c.Server.GetByID(ctx, srv.ID); gone != nil || err != nil {
		t.Errorf("GetByID after delete = %+v, %v, want nil, nil", gone, err)
	}

	bad := hcloud.NewClient(hcloud.WithToken("wrong"), hcloud.WithEndpoint(f.APIURL()))
	_, _, err = bad.Pricing.Get(ctx)
	if !hcloud.IsError(err, hcloud.ErrorCodeUnauthorized) {
		t.Errorf("Pricing.Get with a wrong token = %v, want unauthorized", err)
	}
	f.Fail(Failure{Status: 429, Code: "rate_limit_exceeded", Message: "slow down", RetryAfter: "2"})
	nr := hcloud.NewClient(hcloud.WithToken(token), hcloud.WithEndpoint(f.APIURL()), hcloud.WithRetryOpts(hcloud.RetryOpts{MaxRetries: 0}))
	_, resp, err := nr.Pricing.Get(ctx)
	if !hcloud.IsError(err, hcloud.ErrorCodeRateLimitExceeded) || resp.Header.Get("Retry-After") != "2" {
		t.Errorf("Pricing.Get on a 429 = %v, want rate_limit_exceeded with Retry-After 2", err)
	}
}

// TestStrictSchema decodes the fake's answers with hcloud-go's schema
// types, refusing any field they do not have.
func TestStrictSchema(t *testing.T) {
	f := New(t, token)
	id := f.AddServer(Server{Name: "s", Status: "running", Type: "cx22", Location: "fsn1", IPv4: "192.0.2.1", IPv6: "2001:db8::/64", Image: "debian-12"})
	f.AddKey("k", pub)
	tests := []struct {
		method, path string
		body         string
		into         any
	}{
		{"GET", "/servers", "", &struct {
			schema.ServerListResponse
			schema.MetaResponse
		}{}},
		{"GET", "/servers/" + strconv.FormatInt(id, 10), "", &schema.ServerGetResponse{}},
		{"GET", "/server_types", "", &struct {
			schema.ServerTypeListResponse
			schema.MetaResponse
		}{}},
		{"GET", "/locations", "", &struct {
			schema.LocationListResponse
			schema.MetaResponse
		}{}},
		{"GET", "/ssh_keys", "", &struct {
			schema.SSHKeyListResponse
			schema.MetaResponse
		}{}},
		{"GET", "/pricing", "", &schema.PricingGetResponse{}},
		{"POST", "/servers/" + strconv.FormatInt(id, 10) + "/actions/enable_rescue", `{"type":"linux64"}`, &schema.ServerActionEnableRescueResponse{}},
		{"POST", "/servers/" + strconv.FormatInt(id, 10) + "/actions/poweron", "", &schema.ServerActionPoweronResponse{}},
		{"POST", "/servers/" + strconv.FormatInt(id, 10) + "/actions/reset", "", &schema.ServerActionResetResponse{}},
		{"POST", "/servers", `{"name":"n","server_type":"cx22","image":"debian-12","location":"nbg1","start_after_create":false}`, &schema.ServerCreateResponse{}},
		{"DELETE", "/servers/" + strconv.FormatInt(id, 10), "", &schema.ServerDeleteResponse{}},
		{"GET", "/servers/999", "", &schema.ErrorResponse{}},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(tt.method, f.APIURL()+tt.path, bytes.NewReader([]byte(tt.body)))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(tt.into); err != nil {
			t.Errorf("%s %s: %s does not decode strictly into %T: %v", tt.method, tt.path, b, tt.into, err)
		}
	}
}
