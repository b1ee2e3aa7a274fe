package main

// nbship machines: server discovery. The running builders as a Nix/Hydra
// machines file, each with the host key read from the host itself: the
// Packet devices, and the Hetzner builders when a token is configured.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nbship/nbship/metal"
	"github.com/nbship/nbship/provider/hetzner"
)

func init() {
	register(command{name: "machines", summary: "the running builders as a Nix/Hydra machines file", run: cmdMachines})
}

func cmdMachines(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "machines", "[--tag hydra] [--skip-tag skip-hydra] [--user root] [--ssh-key PATH] [--max-jobs N] [--speed-factor N] [--features a,b] [--mandatory-features a,b] [flags]")
	pf := addPacketFlags(fs)
	var o metal.MachinesOptions
	fs.StringVar(&o.Tag, "tag", "hydra", "only devices with this tag (\"\" for all)")
	fs.StringVar(&o.SkipTag, "skip-tag", metal.DrainTag, "but not devices with this tag (\"\" for none)")
	fs.StringVar(&o.User, "user", "root", "SSH user Hydra logs in as")
	fs.StringVar(&o.SSHKey, "ssh-key", "", "`PATH` of the SSH identity Hydra uses (default none: -)")
	fs.IntVar(&o.MaxJobs, "max-jobs", 1, "builds at once per machine")
	fs.IntVar(&o.SpeedFactor, "speed-factor", 1, "relative speed; Nix prefers faster machines")
	fs.StringSliceVar(&o.Features, "features", nil, "supported features, comma-separated (like big-parallel,kvm)")
	fs.StringSliceVar(&o.Mandatory, "mandatory-features", nil, "features a build must require to be sent here")
	fs.IntVar(&o.Port, "port", 22, "SSH port the host keys are read from")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "how long to wait for each host's key")
	strict := fs.Bool("strict", false, "exit non-zero when a builder had to be left out")
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if err := machinesCheck(&o); err != nil {
		return err
	}
	cfg, err := pf.loadConfig()
	if err != nil {
		return err
	}
	o.Systems = map[string]string{}
	for _, p := range cfg.Profiles {
		o.Systems[p.Name] = p.System
	}
	// Packet as before; Hetzner too when a token is configured. With
	// neither, Packet's error says what is missing.
	var devs []metal.Device
	hz := hetznerToken(e, cfg) != ""
	if packetConfigured(e, cfg) || !hz {
		c, err := pf.client(e, cfg)
		if err != nil {
			return err
		}
		if devs, err = c.Devices(ctx, ""); err != nil {
			return packetErr(err)
		}
	}
	if hz {
		hc, err := hetznerClient(e, cfg, "")
		if err != nil {
			return err
		}
		hd, err := hetznerDevices(ctx, hc, o.Systems)
		if err != nil {
			return builderErr(hetzner.Name, err)
		}
		devs = append(devs, hd...)
	}
	ms, skipped := metal.Machines(ctx, devs, o)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, s := range skipped {
		fmt.Fprintf(e.stderr, "nbship: warning: %v; left out\n", s)
	}
	if len(ms)+len(skipped) == 0 {
		fmt.Fprintf(e.stderr, "machines: no active device has tag %q (and not %q)\n", o.Tag, o.SkipTag)
	}
	if pf.json {
		if ms == nil {
			ms = []metal.Machine{}
		}
		if err := printJSON(e.stdout, ms); err != nil {
			return err
		}
	} else {
		var b strings.Builder
		for _, m := range ms {
			b.WriteString(m.Line())
			b.WriteByte('\n')
		}
		if _, err := fmt.Fprint(e.stdout, b.String()); err != nil {
			return err
		}
	}
	if *strict && len(skipped) > 0 {
		return fmt.Errorf("machines: %d of %d builders left out (see the warnings above)", len(skipped), len(skipped)+len(ms))
	}
	return nil
}

// machinesCheck rejects values that would break a machines file line.
func machinesCheck(o *metal.MachinesOptions) error {
	word := func(flag, v string) error {
		if strings.ContainsAny(v, " \t\n,#") {
			return usageError("machines: %s %q must not contain spaces, commas or #", flag, v)
		}
		return nil
	}
	if o.User == "" || strings.ContainsAny(o.User, "@:/") {
		return usageError("machines: --user %q is not a user name", o.User)
	}
	if err := word("--user", o.User); err != nil {
		return err
	}
	if err := word("--ssh-key", o.SSHKey); err != nil {
		return err
	}
	if o.MaxJobs < 1 || o.SpeedFactor < 1 {
		return usageError("machines: --max-jobs and --speed-factor must be at least 1")
	}
	if o.Port < 1 || o.Port > 65535 {
		return usageError("machines: --port %d is not 1-65535", o.Port)
	}
	if err := packetTimeout("machines", o.Timeout); err != nil {
		return err
	}
	for _, list := range []struct {
		flag string
		v    *[]string
	}{{"--features", &o.Features}, {"--mandatory-features", &o.Mandatory}} {
		var keep []string
		for _, f := range *list.v {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			if err := word(list.flag, f); err != nil {
				return err
			}
			keep = append(keep, f)
		}
		*list.v = keep
	}
	return nil
}
