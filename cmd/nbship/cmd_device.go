package main

// nbship device: list the project's devices, reboot one (and wait for SSH
// to go down and come back, as reboot.sh did), drain and restore (the
// skip-hydra tag, as drain.sh and restore.sh did).

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nbship/nbship/metal"
)

func init() {
	registerGroup("device", "list, reboot, drain and restore Packet devices", "",
		subcommand{"list", "list the project's devices", deviceList},
		subcommand{"reboot", "reboot a device (--wait HOST: until SSH is back)", deviceReboot},
		subcommand{"drain", "tag a device skip-hydra so the machines file leaves it out", deviceDrain},
		subcommand{"restore", "remove the skip-hydra tag again", deviceRestore},
	)
}

// deviceProbeInterval is the pause between SSH probes of --wait; the tests
// shorten it.
var deviceProbeInterval = 2 * time.Second

func deviceList(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "device list", "[--tag T] [flags]")
	pf := addPacketFlags(fs)
	tag := fs.String("tag", "", "only devices with this tag")
	_, c, err := pf.parse(e, fs, args, 0, "no arguments")
	if err != nil {
		return err
	}
	ds, err := c.Devices(ctx, *tag)
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		if ds == nil {
			ds = []metal.Device{}
		}
		return printJSON(e.stdout, ds)
	}
	if len(ds) == 0 {
		fmt.Fprintln(e.stderr, "device: no devices")
		return nil
	}
	return deviceTable(e.stdout, ds)
}

func deviceTable(w io.Writer, ds []metal.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOSTNAME\tSTATE\tPLAN\tLOCATION\tIPV4\tTAGS")
	for _, d := range ds {
		loc := d.Metro
		if d.Facility != "" {
			loc = strings.TrimPrefix(loc+"/"+d.Facility, "/")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, deviceDash(d.Hostname), deviceDash(d.State), deviceDash(d.Plan), deviceDash(loc), deviceDash(d.PublicIPv4), deviceDash(strings.Join(d.Tags, ",")))
	}
	return tw.Flush()
}

func deviceDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func deviceReboot(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "device reboot", "ID [--wait HOST[:PORT]] [--timeout 10m] [flags]")
	pf := addPacketFlags(fs)
	wait := fs.String("wait", "", "after the reboot, wait until SSH on `HOST[:PORT]` (port 22 by default) goes down and comes back")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long --wait waits in all")
	pos, err := parseArgs(fs, args, 1, "the device ID")
	if err != nil {
		return err
	}
	if err := packetTimeout("device reboot", *timeout); err != nil {
		return err
	}
	addr := ""
	if *wait != "" {
		if addr, err = deviceWaitAddr(*wait); err != nil {
			return usageError("device reboot: --wait %q: %v", *wait, err)
		}
	}
	c, _, err := pf.setup(e)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := c.Reboot(ctx, pos[0]); err != nil {
		return packetErr(err)
	}
	result := map[string]any{"id": pos[0], "rebooted": true}
	if addr == "" {
		if pf.json {
			return printJSON(e.stdout, result)
		}
		_, err = fmt.Fprintf(e.stdout, "device %s: reboot requested\n", pos[0])
		return err
	}
	fmt.Fprintf(e.stderr, "device: %s: reboot requested\n", pos[0])
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	banner, err := metal.WaitReboot(wctx, addr, metal.WaitOptions{
		Interval: deviceProbeInterval,
		Note:     func(format string, a ...any) { fmt.Fprintf(e.stderr, "device: "+format+"\n", a...) },
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return withHint(fmt.Errorf("device: %w", err), "look at the device's console (SOS) in the Equinix Metal console, or give --timeout more time")
	}
	took := time.Since(start).Round(time.Second)
	if pf.json {
		result["host"] = addr
		result["banner"] = banner
		result["seconds"] = took.Seconds()
		return printJSON(e.stdout, result)
	}
	_, err = fmt.Fprintf(e.stdout, "device %s rebooted; SSH on %s is back after %s\n", pos[0], addr, took)
	return err
}

// deviceWaitAddr turns HOST or HOST:PORT into HOST:PORT, port 22 by default.
func deviceWaitAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port (or a bare IPv6 address).
		host, port = strings.Trim(s, "[]"), "22"
	}
	if host == "" || strings.ContainsAny(host, " /@") {
		return "", fmt.Errorf("not a host or host:port")
	}
	var n int
	if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
		return "", fmt.Errorf("port %q is not 1-65535", port)
	}
	return net.JoinHostPort(host, port), nil
}

func deviceDrain(ctx context.Context, e *env, args []string) error {
	return deviceTag(ctx, e, args, true)
}

func deviceRestore(ctx context.Context, e *env, args []string) error {
	return deviceTag(ctx, e, args, false)
}

func deviceTag(ctx context.Context, e *env, args []string, drain bool) error {
	name, synopsis := "device restore", "ID [flags]"
	if drain {
		name = "device drain"
	}
	fs := newFlagSet(e, name, synopsis)
	pf := addPacketFlags(fs)
	tag := fs.String("skip-tag", metal.DrainTag, "the tag that keeps a device out of the machines file")
	pos, err := parseArgs(fs, args, 1, "the device ID")
	if err != nil {
		return err
	}
	if strings.TrimSpace(*tag) == "" {
		return usageError("%s: --skip-tag must not be empty", name)
	}
	c, _, err := pf.setup(e)
	if err != nil {
		return err
	}
	edit, did, already := c.RemoveTag, "restored (tag %s removed)", "had no tag %s; nothing to do"
	if drain {
		edit, did, already = c.AddTag, "drained (tag %s added)", "is drained already (tag %s)"
	}
	d, changed, err := edit(ctx, pos[0], *tag)
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		return printJSON(e.stdout, map[string]any{"device": d, "changed": changed})
	}
	msg := fmt.Sprintf(already, *tag)
	if changed {
		msg = fmt.Sprintf(did, *tag)
	}
	_, err = fmt.Fprintf(e.stdout, "device %s %s %s; tags now: %s\n", d.ID, deviceDash(d.Hostname), msg, deviceDash(strings.Join(d.Tags, ",")))
	return err
}
