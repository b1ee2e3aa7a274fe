package packet

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nbship/nbship/metal"
	"github.com/nbship/nbship/metal/metaltest"
	"github.com/nbship/nbship/provider"
)

const (
	tok     = "pk-SECRET-token"
	project = "7e1f3c2a-9b8d-4e6f-a1b2-c3d4e5f60718"
	reqID   = "5a7e1111-2222-4333-8444-555566667777"
	waitID  = "5a7e1111-2222-4333-8444-000000000002"
	arm     = "de000000-0000-4000-8000-00000000000a"
	alone   = "de000000-0000-4000-8000-00000000000c"
)

func setup(t *testing.T) (*Client, *metaltest.Server) {
	t.Helper()
	srv := metaltest.NewServer(t, tok, project)
	srv.AddDevice(metaltest.Device{ID: arm, Hostname: "arm1", State: "active", Plan: "c2.large.arm", Metro: "da", PublicIP: "147.75.0.10", Tags: []string{"hydra"}})
	srv.AddDevice(metaltest.Device{ID: alone, Hostname: "pet", State: "active", Plan: "m2.xlarge.x86", Metro: "da", PublicIP: "147.75.0.12"})
	srv.AddRequest(metaltest.Request{ID: reqID, Plan: "c2.large.arm", Metro: "da", Min: 1, Max: 1, MaxBid: 0.5, Hostname: "arm1", IPXEURL: "http://x/netboot.ipxe", DeviceIDs: []string{arm}})
	srv.AddRequest(metaltest.Request{ID: waitID, Plan: "m2.xlarge.x86", Metro: "sv", Min: 1, Max: 1, MaxBid: 0.2, Hostname: "x86", IPXEURL: "http://x/netboot.ipxe"})
	srv.SetPrice(false, "da", "c2.large.arm", 0.3)
	srv.SetPrice(false, "sv", "m2.xlarge.x86", 0.4)
	sc, err := metal.New(metal.Options{Token: tok, ProjectID: project, APIURL: srv.APIURL(), Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return New(sc), srv
}

func TestListGetDelete(t *testing.T) {
	c, srv := setup(t)
	ctx := context.Background()
	list, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range list {
		got = append(got, s.Name+" "+s.Status+" "+s.Arch)
	}
	if want := []string{"arm1 active aarch64", "x86 waiting x86_64"}; !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q (the request's device and the waiting request; not the device no request made)", got, want)
	}
	if s, err := c.Get(ctx, arm); err != nil || s.IPv4 != "147.75.0.10" || !s.Running || s.Hourly != 0.5 {
		t.Errorf("Get(device) = %+v, %v", s, err)
	}
	if _, err := c.Get(ctx, alone); !errors.Is(err, ErrNotBuilder) {
		t.Errorf("Get(a device no request made) = %v, want ErrNotBuilder", err)
	}
	if err := c.Delete(ctx, alone); !errors.Is(err, ErrNotBuilder) {
		t.Errorf("Delete(a device no request made) = %v, want ErrNotBuilder", err)
	}
	if err := c.Delete(ctx, arm); err != nil {
		t.Fatal(err)
	}
	if srv.HasRequest(reqID) {
		t.Error("Delete(device) left its spot request")
	}
	var del []string
	for _, call := range srv.Calls() {
		if call.Method == "DELETE" {
			del = append(del, call.Path+" "+string(call.Body))
		}
	}
	if len(del) != 1 || !strings.Contains(del[0], "spot-market-requests/"+reqID) || !strings.Contains(del[0], `"force_termination":true`) {
		t.Errorf("DELETEs = %q, want the request cancelled with its devices", del)
	}
}

func TestPricesAndCreate(t *testing.T) {
	c, srv := setup(t)
	ctx := context.Background()
	ps, err := c.Prices(ctx, provider.PriceQuery{Location: "da"})
	want := []provider.Price{{Type: "c2.large.arm", Location: "da", Arch: "aarch64", Hourly: 0.3, Currency: "USD", Note: "spot"}}
	if err != nil || !slices.Equal(ps, want) {
		t.Errorf("Prices(da) = %+v, %v, want %+v", ps, err, want)
	}
	r := provider.CreateRequest{Name: "arm2", Type: "c2.large.arm", Location: "da", MaxBid: 0.5, IPXEURL: "http://netboot.example/hydra-c2.large.arm/netboot.ipxe"}
	s, err := c.Create(ctx, r)
	if err != nil || s.Status != "waiting" || s.Name != "arm2" || !slices.Equal(s.Labels, []string{"hydra"}) {
		t.Errorf("Create = %+v, %v, want a waiting request tagged hydra", s, err)
	}
	if !srv.HasRequest(s.ID) {
		t.Errorf("Create's request %s is not on the server", s.ID)
	}
	r.MaxBid = 0
	if _, err := DryRun(r); err == nil {
		t.Error("DryRun without a max bid = nil error")
	}
}
