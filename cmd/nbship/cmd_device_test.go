package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/nbship/nbship/metal/metaltest"
)

func TestDeviceList(t *testing.T) {
	tests := []struct {
		args   []string
		stdout []string
		absent string
	}{
		{[]string{"device", "list"}, []string{"HOSTNAME", "arm1", "x86a", "147.75.0.10", "da/dfw2", "hydra,arm"}, ""},
		{[]string{"device", "list", "--tag", "arm"}, []string{"arm1"}, "x86a"},
		{[]string{"device", "list", "--json"}, []string{`"id":"` + pkX86 + `"`, `"plan":"m2.xlarge.x86"`, `"public_ipv4":"147.75.0.11"`}, "10.0.0.10"},
	}
	for _, tt := range tests {
		srv := pkServer(t)
		args := strings.Join(tt.args, " ")
		r := runPacket(t, srv, nil, nil, tt.args...)
		r.check(t, args, 0, tt.stdout, nil)
		if tt.absent != "" && strings.Contains(r.stdout, tt.absent) {
			t.Errorf("nbship %s: stdout = %q, want no %q", args, r.stdout, tt.absent)
		}
		if c := srv.Calls()[0]; c.Method != "GET" || c.Path != "projects/"+pkProject+"/devices" || c.Token != pkToken {
			t.Errorf("nbship %s sent %s %s (token ok %v)", args, c.Method, c.Path, c.Token == pkToken)
		}
	}
}

func TestDeviceDrainRestore(t *testing.T) {
	srv := pkServer(t)
	steps := []struct {
		args   []string
		stdout string
		put    []string // tags the PUT sends; nil for no PUT
		tags   []string // on the server afterwards
	}{
		{[]string{"device", "drain", pkArm}, "drained (tag skip-hydra added); tags now: hydra,arm,skip-hydra", []string{"hydra", "arm", "skip-hydra"}, []string{"hydra", "arm", "skip-hydra"}},
		{[]string{"device", "drain", pkArm}, "is drained already (tag skip-hydra)", nil, []string{"hydra", "arm", "skip-hydra"}},
		{[]string{"device", "restore", pkArm}, "restored (tag skip-hydra removed); tags now: hydra,arm", []string{"hydra", "arm"}, []string{"hydra", "arm"}},
		{[]string{"device", "restore", pkArm}, "had no tag skip-hydra; nothing to do", nil, []string{"hydra", "arm"}},
		{[]string{"device", "drain", "--skip-tag", "maintenance", pkArm}, "drained (tag maintenance added)", []string{"hydra", "arm", "maintenance"}, []string{"hydra", "arm", "maintenance"}},
	}
	for _, st := range steps {
		args := strings.Join(st.args, " ")
		before := len(srv.Calls())
		r := runPacket(t, srv, nil, nil, st.args...)
		r.check(t, args, 0, []string{st.stdout}, nil)
		var puts []metaltest.Call
		for _, c := range srv.Calls()[before:] {
			if c.Method == "PUT" {
				puts = append(puts, c)
			}
		}
		switch {
		case st.put == nil && len(puts) != 0:
			t.Errorf("nbship %s sent %d PUTs, want none", args, len(puts))
		case st.put != nil && len(puts) != 1:
			t.Errorf("nbship %s sent %d PUTs, want 1", args, len(puts))
		case st.put != nil:
			var body struct {
				Tags []string `json:"tags"`
			}
			if err := json.Unmarshal(puts[0].Body, &body); err != nil || !slices.Equal(body.Tags, st.put) || puts[0].Path != "devices/"+pkArm {
				t.Errorf("nbship %s sent PUT %s %s, want devices/%s with tags %q", args, puts[0].Path, puts[0].Body, pkArm, st.put)
			}
		}
		if got := srv.Device(pkArm).Tags; !slices.Equal(got, st.tags) {
			t.Errorf("after nbship %s the device has tags %q, want %q", args, got, st.tags)
		}
	}
	if got := srv.Device(pkX86).Tags; !slices.Equal(got, []string{"hydra"}) {
		t.Errorf("the other device's tags = %q, want untouched [hydra]", got)
	}
}

func TestDeviceReboot(t *testing.T) {
	t.Run("no wait", func(t *testing.T) {
		srv := pkServer(t)
		r := runPacket(t, srv, nil, nil, "device", "reboot", pkX86)
		r.check(t, "device reboot", 0, []string{"reboot requested"}, nil)
		checkRebootCall(t, srv, pkX86)
	})
	t.Run("wait", func(t *testing.T) {
		srv := pkServer(t)
		host := metaltest.NewBannerServer(t)
		// The host goes away when the API is asked to reboot it, and comes
		// back a little later, first without a banner (sshd not ready).
		back := make(chan error, 1)
		srv.OnReboot(func(string) {
			host.GoAway()
			go func() {
				var err error
				for range 50 {
					if err = host.ComeBack(2); err == nil {
						break
					}
				}
				back <- err
			}()
		})
		r := runPacket(t, srv, nil, nil, "device", "reboot", pkX86, "--wait", host.Addr, "--timeout", "20s")
		r.check(t, "device reboot --wait", 0, []string{"device " + pkX86 + " rebooted; SSH on " + host.Addr + " is back after"},
			[]string{"waiting for SSH on " + host.Addr + " to go down", "is down", "is up again"})
		if err := <-back; err != nil {
			t.Fatalf("banner server did not come back: %v", err)
		}
		checkRebootCall(t, srv, pkX86)
	})
	t.Run("host never goes down", func(t *testing.T) {
		srv := pkServer(t)
		host := metaltest.NewBannerServer(t)
		r := runPacket(t, srv, nil, nil, "device", "reboot", pkX86, "--wait", host.Addr, "--timeout", "100ms")
		r.check(t, "device reboot --wait (never down)", 1, nil, []string{"still answers after", "did the reboot happen?", "hint: "})
	})
	errs := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"device", "reboot", pkX86, "--wait", "host:0"}, 2, `port "0" is not 1-65535`},
		{[]string{"device", "reboot", pkX86, "--wait", "root@host"}, 2, "not a host"},
		{[]string{"device", "reboot", pkX86, "--timeout", "0s"}, 2, "--timeout must be positive"},
		{[]string{"device", "reboot", "x86a"}, 1, `device ID "x86a" is not a UUID`},
		{[]string{"device", "reboot"}, 2, "want the device ID"},
		{[]string{"device", "reboot", "de000000-0000-4000-8000-0000000000ff"}, 1, "not found (404 Not Found): POST devices/de000000-0000-4000-8000-0000000000ff/actions"},
	}
	for _, tt := range errs {
		srv := pkServer(t)
		r := runPacket(t, srv, nil, nil, tt.args...)
		r.check(t, strings.Join(tt.args, " "), tt.code, nil, []string{tt.want})
	}
}

func checkRebootCall(t *testing.T, srv *metaltest.Server, id string) {
	t.Helper()
	for _, c := range srv.Calls() {
		if c.Method == "POST" && c.Path == "devices/"+id+"/actions" {
			var a struct {
				Type string `json:"type"`
			}
			if err := json.Unmarshal(c.Body, &a); err != nil || a.Type != "reboot" || c.Token != pkToken {
				t.Errorf("reboot sent %s (token ok %v), want {\"type\":\"reboot\"}", c.Body, c.Token == pkToken)
			}
			return
		}
	}
	t.Errorf("no POST devices/%s/actions in %+v", id, srv.Calls())
}

func TestDeviceWaitAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"builder.example", "builder.example:22"},
		{"147.75.0.10:2222", "147.75.0.10:2222"},
		{"[2604:1380::1]:22", "[2604:1380::1]:22"},
		{"2604:1380::1", "[2604:1380::1]:22"},
		{"host:ssh", ""},
		{"", ""},
	}
	for _, tt := range tests {
		got, err := deviceWaitAddr(tt.in)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("deviceWaitAddr(%q) = %q, %v, want %q", tt.in, got, err, tt.want)
		}
	}
}
