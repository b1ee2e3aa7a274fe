package main

import (
	"bytes"
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
	"github.com/nbship/nbship/internal/ends"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/remote"
	"github.com/nbship/nbship/transfer"
)

func init() {
	register(command{name: "aarch64", summary: "build the aarch64 netboot image on the build host and publish it on the PXE host",
		run: func(ctx context.Context, e *env, args []string) error { return cmdBuild(ctx, e, image.Aarch64, args) }})
	register(command{name: "x86_64", summary: "build the x86_64 netboot image on the PXE host and publish it there",
		run: func(ctx context.Context, e *env, args []string) error { return cmdBuild(ctx, e, image.X86_64, args) }})
}

// buildsOnPXE says where an image of system is built: an x86_64 one on the
// PXE host itself (an x86_64 machine with Nix, as build-x86-64-linux.sh
// did), published from its own store with no transfer of image bytes; an
// aarch64 one on the build host, then shipped to the PXE host.
func buildsOnPXE(system string) bool { return system == image.X86_64 }

// defaultInstance is the instance type a build command makes when neither
// --instance nor the config names one.
var defaultInstance = map[string]string{image.Aarch64: "c2.large.arm", image.X86_64: "m2.xlarge.x86"}

// cmdBuild is aarch64 and x86_64: instantiate here, push the .drv closure
// to the host that builds, realise it there, check the output, and publish
// it as a new generation of the slot: shipped from the build host, or from
// the PXE host's own store.
func cmdBuild(ctx context.Context, e *env, system string, args []string) error {
	name := strings.TrimSuffix(system, "-linux")
	fs := newFlagSet(e, name, "--config FILE [flags]")
	cfgPath := fs.String("config", "", "builders.conf `FILE`")
	instance := fs.String("instance", "", "instance `TYPE` (default: the config's instance, else "+defaultInstance[system]+")")
	drv := fs.String("drv", "", "use this already instantiated `DRV` instead of running nix-instantiate")
	asJSON := fs.Bool("json", false, "print a JSON summary on stdout")
	shipping := !buildsOnPXE(system)
	var pathFlag, level *string
	var dialTimeout, idle *time.Duration
	var retries, lanes *int
	if shipping {
		pathFlag = fs.String("path", controller.PathAuto, "how the image travels, `MODE`: auto (direct, else over SSH), direct, or ssh")
		dialTimeout = fs.Duration("dial-timeout", 5*time.Second, "how long the build host tries the direct path before auto falls back to SSH")
		level = fs.String("level", "auto", "zstd `LEVEL`: auto (better on a link much slower than the compressor), fastest, default or better")
		retries = fs.Int("retries", 2, "run the transfer again this many times when an end or the link fails; a retry sends only what has not arrived")
		idle = fs.Duration("idle-timeout", ends.DefaultIdle, "the ends give up when nothing crosses the channel for this `DURATION`")
		lanes = lanesFlag(fs)
	}
	var sf sshFlags
	sf.add(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("%s: unexpected argument %q", name, fs.Arg(0))
	}
	// Every flag is checked before any host is dialled.
	if shipping {
		if err := checkPath(name, *pathFlag); err != nil {
			return err
		}
		if err := checkLanes(name, *lanes); err != nil {
			return err
		}
		if _, err := transfer.EncoderLevel(*level); err != nil {
			return usageError("%s: %v", name, err)
		}
		if *retries < 0 {
			return usageError("%s: --retries %d is negative", name, *retries)
		}
	}
	keys := []string{"pxeHost", "pxeDir"}
	if shipping {
		keys = []string{"buildHost", "pxeHost", "pxeDir", "opensslServer", "opensslPort"}
	}
	cfg, err := loadConfig(*cfgPath, keys...)
	if err != nil {
		return err
	}
	inst := firstOf(*instance, cfg.Instance, defaultInstance[system])
	prof, err := checkProfile(cfg, inst, system)
	if err != nil {
		return err
	}
	start := time.Now()

	// An instantiated .drv's closure is asked of the local store while the
	// hosts are reached: it needs neither.
	type query struct {
		paths []string
		err   error
	}
	requisites := make(chan query, 1)
	if *drv != "" {
		qctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			p, err := controller.Requisites(qctx, *drv)
			requisites <- query{p, err}
		}()
	}

	dests := []string{cfg.PXEHost}
	if shipping {
		dests = []string{cfg.BuildHost, cfg.PXEHost}
	}
	hosts, err := dialAll(ctx, sf.config(e), dests...)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		defer h.Close()
	}
	builder, pxe := hosts[0], hosts[len(hosts)-1]
	// First, so a host nbship cannot run on fails before any build work.
	bins, err := installAll(ctx, &sf, hosts...)
	if err != nil {
		return err
	}

	if *drv == "" {
		file := firstOf(cfg.NixFile, "./instances/"+inst+".nix")
		fmt.Fprintf(e.stderr, "nbship: instantiating %s\n", file)
		if *drv, err = controller.Instantiate(ctx, file, "./result-"+inst+".drv", e.stderr); err != nil {
			return err
		}
		p, err := controller.Requisites(ctx, *drv)
		requisites <- query{p, err}
	}
	q := <-requisites
	if q.err != nil {
		return q.err
	}
	fmt.Fprintf(e.stderr, "nbship: copying the closure of %s to %s\n", *drv, builder.Name())
	pushed, err := controller.PushClosure(ctx, builder, q.paths, e.stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "nbship: building on %s (-j %d --cores %d)\n", builder.Name(), cfg.Jobs(), cfg.Cores())
	out, err := controller.Realise(ctx, builder, *drv, "result-"+inst, cfg.Jobs(), cfg.Cores(), []string{prof.Kernel, image.InitrdName, image.ScriptName}, e.stderr)
	if err != nil {
		return err
	}
	b := protocol.Build{Instance: inst, Drv: *drv, Out: out, PathsPushed: pushed}
	if !shipping {
		b.Stream, err = publishOnHost(ctx, e, pxe, bins[0], cfg, inst, out)
		if err != nil {
			return err
		}
		b.TotalSeconds = protocol.Round(time.Since(start).Seconds(), 2)
		return printBuild(e, *asJSON, b)
	}

	recv := publishTarget(cfg, inst)
	recv.Listen = ":" + strconv.Itoa(cfg.OpenSSLPort)
	recv.Idle = *idle
	ship := &controller.Ship{
		From: controller.End{Host: builder, Bin: bins[0]},
		To:   controller.End{Host: pxe, Bin: bins[1]},
		Send: protocol.Send{
			Connect:     fmt.Sprintf("%s:%d", cfg.OpenSSLServer, cfg.OpenSSLPort),
			DialTimeout: *dialTimeout,
			Lanes:       *lanes,
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
	if b.Stream, err = shippedStream(res); err != nil {
		return err
	}
	b.TotalSeconds = protocol.Round(time.Since(start).Seconds(), 2)
	return printBuild(e, *asJSON, b)
}

// publishOnHost publishes the store path out as a generation of the slot,
// with nbship image publish on the PXE host, and returns its figures.
func publishOnHost(ctx context.Context, e *env, pxe *remote.Client, bin string, cfg *config.Config, inst, out string) (protocol.Stream, error) {
	fmt.Fprintf(e.stderr, "nbship: publishing %s in %s on %s\n", out, cfg.PXEDir, pxe.Name())
	pub := []string{"image", "publish", "--pxe-dir=" + cfg.PXEDir, "--instance=" + inst, "--keep=" + strconv.Itoa(cfg.Keep()), "--json"}
	if sys := publishTarget(cfg, inst).System; sys != "" {
		pub = append(pub, "--system="+sys)
	}
	pub = append(pub, "--", out)
	var stdout bytes.Buffer
	log := controller.Prefixed(e.stderr, pxe.Name())
	err := runOnHost(ctx, pxe, bin, pub, &stdout, log)
	log.Close()
	if err != nil {
		return protocol.Stream{}, err
	}
	var res imagePublished
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return protocol.Stream{}, fmt.Errorf("x86_64: the summary of image publish on %s, %q: %w", pxe.Name(), stdout.String(), err)
	}
	printPublished(e.stderr, "nbship: ", res)
	return protocol.Stream{
		Files: res.Files, FilesSent: res.FilesSent, Reused: res.Reused, Bytes: res.Bytes,
		Compressed: res.Bytes, Ratio: 1, Seconds: res.Seconds, MBps: res.MBps,
		Published: res.Published, Generation: res.Generation, Previous: res.Previous,
		Path: "local",
	}, nil
}

// checkPath refuses a --path that is not auto, direct or ssh.
func checkPath(cmd, path string) error {
	switch path {
	case controller.PathAuto, controller.PathDirect, controller.PathSSH:
		return nil
	}
	return usageError("%s: --path %q is not auto, direct or ssh", cmd, path)
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// checkProfile finds the instance type's profile and refuses one this
// command cannot build.
func checkProfile(cfg *config.Config, inst, system string) (image.Profile, error) {
	p, err := image.Lookup(inst, imageExtraProfiles(cfg))
	if err != nil {
		return p, usageError("%v", err)
	}
	if p.System != system {
		return p, withHint(usageError("instance %s is %s, not %s", inst, p.System, system), "use 'nbship %s' for it", strings.TrimSuffix(p.System, "-linux"))
	}
	return p, nil
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

// shippedStream is the stream's figures as the sender counted them, with
// what the receiver published and the path the channel took.
func shippedStream(res *controller.Result) (protocol.Stream, error) {
	var s protocol.Stream
	if err := json.Unmarshal(res.Send, &s); err != nil {
		return s, fmt.Errorf("ship: the sender's summary %q: %w", res.Send, err)
	}
	var r protocol.Stream
	if err := json.Unmarshal(res.Recv, &r); err == nil && r.Published != "" {
		s.Published, s.Generation, s.Previous = r.Published, r.Generation, r.Previous
	}
	if res.Path == controller.PathSSH {
		s.WireBytes = res.WireBytes
	}
	s.Path = res.Path
	s.PeakRSS = 0 // the sender's, not this command's
	return s, nil
}

// printBuild prints what a build command did: the published slot on
// stdout (or everything, with --json), the figures on stderr.
func printBuild(e *env, asJSON bool, b protocol.Build) error {
	if asJSON {
		return printJSON(e.stdout, b)
	}
	fmt.Fprintf(e.stdout, "published %s (%s path)\n", b.Published, b.Path)
	if b.Path != "local" {
		printSummary(e.stderr, false, "shipped", b.Stream, false)
	}
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
