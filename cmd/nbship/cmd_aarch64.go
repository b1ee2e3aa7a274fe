package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/controller"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/remote"
)

func init() {
	register(command{name: "aarch64", summary: "build the aarch64 netboot image on the build host and publish it on the PXE host", run: cmdAarch64})
}

// netbootFiles are what every image derivation's output must hold.
var netbootFiles = []string{"Image", "initrd", "netboot.ipxe"}

func cmdAarch64(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "aarch64", "--config FILE [flags]")
	cfgPath := fs.String("config", "", "builders.conf `file`")
	instance := fs.String("instance", "", "instance type (default: the config's instance, else c2.large.arm)")
	drv := fs.String("drv", "", "use this already instantiated `.drv` instead of running nix-instantiate")
	pathFlag := fs.String("path", controller.PathAuto, "how the image travels: auto (direct, else over SSH), direct, or ssh")
	dialTimeout := fs.Duration("dial-timeout", 5*time.Second, "how long the build host tries the direct path before auto falls back to SSH")
	level := fs.String("level", "auto", "zstd level: auto (default, better on a link much slower than the compressor), fastest, default or better")
	asJSON := fs.Bool("json", false, "print a JSON summary on stdout")
	retries := fs.Int("retries", 2, "run the transfer again this many times when an end or the link fails; a retry sends only what has not arrived")
	idle := fs.Duration("idle-timeout", defaultIdle, "the ends give up when nothing crosses the channel for this `long`")
	var sf sshFlags
	sf.add(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("aarch64: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(*cfgPath, "buildHost", "pxeHost", "pxeDir", "opensslServer", "opensslPort")
	if err != nil {
		return err
	}
	inst := firstOf(*instance, cfg.Instance, "c2.large.arm")
	if err := checkProfile(cfg, inst, image.Aarch64); err != nil {
		return err
	}
	start := time.Now()

	hosts, err := dialAll(ctx, sf.config(e), cfg.BuildHost, cfg.PXEHost)
	if err != nil {
		return err
	}
	build, pxe := hosts[0], hosts[1]
	defer build.Close()
	defer pxe.Close()
	// First, so a host nbship cannot run on fails before any build work.
	bins, err := installAll(ctx, &sf, build, pxe)
	if err != nil {
		return err
	}

	if *drv == "" {
		file := firstOf(cfg.NixFile, "./instances/"+inst+".nix")
		fmt.Fprintf(e.stderr, "nbship: instantiating %s\n", file)
		if *drv, err = controller.Instantiate(ctx, file, "./result-"+inst+".drv", e.stderr); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "nbship: copying the closure of %s to %s\n", *drv, build.Name())
	pushed, err := controller.PushClosure(ctx, build, *drv, e.stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "nbship: building on %s (-j %d --cores %d)\n", build.Name(), cfg.Jobs(), cfg.Cores())
	out, err := controller.Realise(ctx, build, *drv, "result-"+inst, cfg.Jobs(), cfg.Cores(), e.stderr)
	if err != nil {
		return err
	}
	if err := controller.CheckImage(ctx, build, out, netbootFiles); err != nil {
		return err
	}
	recv := publishTarget(cfg, inst)
	recv.Listen = ":" + strconv.Itoa(cfg.OpenSSLPort)
	recv.Idle = *idle
	ship := &controller.Ship{
		From: controller.End{Host: build, Bin: bins[0]},
		To:   controller.End{Host: pxe, Bin: bins[1]},
		Relay: protocol.Relay{
			Connect:     fmt.Sprintf("%s:%d", cfg.OpenSSLServer, cfg.OpenSSLPort),
			DialTimeout: *dialTimeout,
			Paths:       []string{out},
			Level:       *level,
			Idle:        *idle,
		},
		Recv: recv,
		Path: *pathFlag,
		Log:  e.stderr,
	}
	res, err := shipWithRetries(ctx, e, ship, *retries)
	if err != nil {
		sweepSlot(pxe, bins[1], cfg, inst, e)
		return err
	}
	return printBuildSummary(e, *asJSON, protocol.Build{
		Instance: inst, Drv: *drv, Out: out, PathsPushed: pushed,
		TotalSeconds: round(time.Since(start).Seconds(), 2),
	}, res)
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// checkProfile refuses an instance type this flow cannot build.
func checkProfile(cfg *config.Config, inst, system string) error {
	p, err := image.Lookup(inst, imageExtraProfiles(cfg))
	if err != nil {
		return usageError("%v", err)
	}
	if p.System != system {
		return withHint(usageError("instance %s is %s, not %s", inst, p.System, system), "use 'nbship %s' for it", strings.TrimSuffix(p.System, "-linux"))
	}
	return nil
}

// publishTarget is a receiver that publishes a generation of the slot.
func publishTarget(cfg *config.Config, inst string) protocol.Recv {
	r := protocol.Recv{Publish: cfg.PXEDir, Instance: inst, Keep: cfg.Keep()}
	for _, p := range cfg.Profiles {
		if p.Name == inst {
			r.System = p.System
		}
	}
	return r
}

// printBuildSummary prints what a build flow did: b with the stream's
// figures as the relay counted them and what the receiver published.
func printBuildSummary(e *env, asJSON bool, b protocol.Build, res *controller.Result) error {
	s := &b.Stream
	if err := json.Unmarshal(res.Relay, s); err != nil {
		return fmt.Errorf("ship: the relay's summary %q: %w", res.Relay, err)
	}
	var r protocol.Stream
	if err := json.Unmarshal(res.Recv, &r); err == nil && r.Published != "" {
		s.Published, s.Generation, s.Previous = r.Published, r.Generation, r.Previous
	}
	if res.Path == controller.PathSSH {
		s.WireBytes = res.WireBytes
	}
	s.Path = res.Path
	s.PeakRSS = 0 // the relay's, not this command's
	if asJSON {
		return json.NewEncoder(e.stdout).Encode(b)
	}
	fmt.Fprintf(e.stdout, "published %s (%s path)\n", s.Published, s.Path)
	printSummary(e.stderr, false, "shipped", *s)
	fmt.Fprintf(e.stderr, "nbship: %s done in %.1fs\n", b.Instance, b.TotalSeconds)
	return nil
}

// sweepSlot removes what a receiver killed mid-transfer left in the slot
// (its staging directory) after a failed run; a receiver that could still
// clean up did so itself. Best effort, with its own deadline: the run's
// context may be the one that was cancelled.
func sweepSlot(pxe *remote.Client, bin string, cfg *config.Config, inst string, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pxe.Run(ctx, remote.Cmd{
		Args:   []string{bin, "image", "gc", "--pxe-dir", cfg.PXEDir, "--instance", inst, "--keep", strconv.Itoa(cfg.Keep())},
		Stderr: io.Discard,
	})
}

// shipWithRetries runs the transfer, and again after a failure a retry can
// fix (an end or its host died, the link dropped), at most retries more
// times. The receiver keeps what a failed attempt verified (--keep-partial)
// and the next attempt links it instead of asking for it again.
func shipWithRetries(ctx context.Context, e *env, ship *controller.Ship, retries int) (*controller.Result, error) {
	for attempt := 1; ; attempt++ {
		// Only an attempt that will be followed by another keeps what it
		// received; the last one leaves nothing behind.
		ship.Recv.KeepPartial = attempt <= retries
		res, err := ship.Run(ctx)
		if err == nil || attempt > retries || !protocol.Retryable(ctx, err) {
			return res, err
		}
		fmt.Fprintf(e.stderr, "nbship: attempt %d of %d failed: %v; trying again, sending only what has not arrived\n", attempt, retries+1, err)
	}
}
