package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/controller"
	"github.com/nbship/nbship/internal/protocol"
)

func init() {
	register(command{name: "x86_64", summary: "build the x86_64 netboot image on the PXE host and publish it there", run: cmdX86_64})
}

// x86Files are what an x86_64 image derivation's output must hold.
var x86Files = []string{"bzImage", "initrd", "netboot.ipxe"}

// cmdX86_64 is build-x86-64-linux.sh: the PXE host is an x86_64 machine
// with Nix, so the image is built there and published from its own store,
// with no transfer of image bytes at all.
func cmdX86_64(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "x86_64", "--config FILE [flags]")
	cfgPath := fs.String("config", "", "builders.conf `file`")
	instance := fs.String("instance", "", "instance type (default: the config's instance, else m2.xlarge.x86)")
	drv := fs.String("drv", "", "use this already instantiated `.drv` instead of running nix-instantiate")
	asJSON := fs.Bool("json", false, "print a JSON summary on stdout")
	var sf sshFlags
	sf.add(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("x86_64: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loadConfig(*cfgPath, "pxeHost", "pxeDir")
	if err != nil {
		return err
	}
	inst := firstOf(*instance, cfg.Instance, "m2.xlarge.x86")
	if err := checkProfile(cfg, inst, image.X86_64); err != nil {
		return err
	}
	start := time.Now()

	hosts, err := dialAll(ctx, sf.config(e), cfg.PXEHost)
	if err != nil {
		return err
	}
	pxe := hosts[0]
	defer pxe.Close()

	if *drv == "" {
		file := firstOf(cfg.NixFile, "./instances/"+inst+".nix")
		fmt.Fprintf(e.stderr, "nbship: instantiating %s\n", file)
		if *drv, err = controller.Instantiate(ctx, file, "./result-"+inst+".drv", e.stderr); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stderr, "nbship: copying the closure of %s to %s\n", *drv, pxe.Name())
	pushed, err := controller.PushClosure(ctx, pxe, *drv, e.stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "nbship: building on %s (-j %d --cores %d)\n", pxe.Name(), cfg.Jobs(), cfg.Cores())
	out, err := controller.Realise(ctx, pxe, *drv, "result-"+inst, cfg.Jobs(), cfg.Cores(), e.stderr)
	if err != nil {
		return err
	}
	if err := controller.CheckImage(ctx, pxe, out, x86Files); err != nil {
		return err
	}
	bins, err := installAll(ctx, &sf, pxe)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "nbship: publishing %s in %s on %s\n", out, cfg.PXEDir, pxe.Name())
	pub := []string{"image", "publish", "--pxe-dir=" + cfg.PXEDir, "--instance=" + inst, "--keep=" + strconv.Itoa(cfg.Keep()), "--json"}
	for _, p := range cfg.Profiles {
		if p.Name == inst {
			pub = append(pub, "--system="+p.System)
		}
	}
	pub = append(pub, "--", out)
	var stdout bytes.Buffer
	log := controller.Prefixed(e.stderr, pxe.Name())
	err = runOnHost(ctx, pxe, bins[0], pub, &stdout, log)
	log.Close()
	if err != nil {
		return err
	}
	var res imagePublished
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return fmt.Errorf("x86_64: the summary of image publish on %s, %q: %w", pxe.Name(), stdout.String(), err)
	}
	b := protocol.Build{Instance: inst, Drv: *drv, Out: out, PathsPushed: pushed, TotalSeconds: round(time.Since(start).Seconds(), 2),
		Stream: protocol.Stream{
			Files: res.Files, FilesSent: res.FilesSent, Reused: res.Reused, Bytes: res.Bytes,
			Compressed: res.Bytes, Ratio: 1, Seconds: res.Seconds, MBps: res.MBps,
			Published: res.Published, Generation: res.Generation, Previous: res.Previous,
			Path: "local",
		}}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(b)
	}
	fmt.Fprintf(e.stdout, "published %s (local path)\n", res.Published)
	printPublished(e.stderr, "nbship: ", res)
	fmt.Fprintf(e.stderr, "nbship: %s done in %.1fs\n", inst, b.TotalSeconds)
	return nil
}
