package main

// nbship kexec HOST: boot the slot's current generation on a running Linux
// host by kexec. Package kexec does the work on both sides; this file is
// flags, reading the generation from the PXE host, and output. The hidden
// kexec-end is the host's side.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/kexec"
	"github.com/nbship/nbship/remote"
)

func init() {
	register(command{name: "kexec", summary: "boot the published image of an instance type on a running Linux host by kexec, over SSH", run: cmdKexec})
	register(command{name: kexec.EndCommand, summary: "the host's side of nbship kexec (started by it)", run: cmdKexecEnd, hidden: true})
}

// kexecOptions say what to boot and how; cmdKexec fills them from its
// flags, the builders commands from theirs.
type kexecOptions struct {
	cfg      *config.Config
	profile  image.Profile
	baseURL  string      // "" = cfg.BaseURL
	fetch    kexec.Fetch // "" = auto
	timeout  time.Duration
	ssh      *sshFlags
	pxeHost  string // "" = cfg.PXEHost
	pxeDir   string // "" = cfg.PXEDir
	progress io.Writer
}

func cmdKexec(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "kexec", "HOST --config FILE [--instance NAME] [--timeout 10m] [--fetch auto|url|controller] [--json]")
	configPath := fs.String("config", "", "builders.conf `FILE`: pxeHost, pxeDir, baseURL, instance and profile lines")
	instance := fs.String("instance", "", "instance `NAME` whose published image to boot, like c2.large.arm (default: instance from --config)")
	baseURL := fs.String("base-url", "", "`URL` where pxeDir is served, as the host reaches it (default: baseURL from --config)")
	fetch := fs.String("fetch", "auto", "`HOW` the host gets the kernel and initrd: auto (the PXE host's URL, else sent through this machine), url, controller")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long (`DURATION`) to wait for the host to answer SSH again after the kexec")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	var sf sshFlags
	sf.add(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return withHint(usageError("kexec: give one HOST ([user@]host[:port] or an ssh config alias)"), "like: nbship kexec root@203.0.113.7 --config builders.conf --instance c2.large.arm")
	}
	host := fs.Arg(0)
	f, err := kexec.ParseFetch(*fetch)
	if err != nil {
		return usageError("%v", err)
	}
	if *timeout <= 0 {
		return usageError("kexec: --timeout %v: give a positive duration, like 10m", *timeout)
	}
	cfg, err := loadConfig(*configPath, "pxeHost", "pxeDir")
	if err != nil {
		return err
	}
	name := *instance
	if name == "" {
		name = cfg.Instance
	}
	if name == "" {
		return withHint(usageError("kexec: --instance NAME is required"), "name the instance type whose image to boot, like --instance c2.large.arm, or set instance in the config")
	}
	p, err := image.Lookup(name, imageExtraProfiles(cfg))
	if err != nil {
		return err
	}
	o := kexecOptions{cfg: cfg, profile: p, baseURL: *baseURL, fetch: f, timeout: *timeout, ssh: &sf, progress: e.stderr}

	targets, err := dialAll(ctx, sf.config(e), host)
	if err != nil {
		return err
	}
	target := targets[0]
	defer target.Close()
	res, err := kexecHost(ctx, e, o, target)
	var na *kexec.NoAnswerError
	if errors.As(err, &na) && *asJSON {
		printJSON(e.stdout, res)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, res)
	}
	key := ""
	if res.HostKey != "" {
		key = fmt.Sprintf("; its host key is now %s (the image's own: check it, then add it to known_hosts)", res.HostKey)
	}
	_, err = fmt.Fprintf(e.stdout, "%s runs %s %s: answers SSH again after %.0fs (%s)%s\n", res.Host, res.Instance, res.Generation, res.Seconds, res.Banner, key)
	return err
}

// kexecHost boots the current generation of o.profile's slot on target
// (dialled, its host key checked): it reads the generation from the PXE
// host, puts nbship on target and runs kexec.Run. The builders commands
// call it with the machine they created.
func kexecHost(ctx context.Context, e *env, o kexecOptions, target *remote.Client) (kexec.Result, error) {
	pxeHost, pxeDir, base := o.pxeHost, o.pxeDir, o.baseURL
	if pxeHost == "" {
		pxeHost = o.cfg.PXEHost
	}
	if pxeDir == "" {
		pxeDir = o.cfg.PXEDir
	}
	if base == "" {
		base = o.cfg.BaseURL
	}
	fetch := o.fetch
	if fetch == "" {
		fetch = kexec.FetchAuto
	}
	if fetch == kexec.FetchURL && base == "" {
		return kexec.Result{}, withHint(usageError("kexec: --fetch url needs the URL where pxeDir is served"), "add a line like 'baseURL http://my.netboot.server/' to the config, or pass --base-url")
	}
	hosts, err := dialAll(ctx, o.ssh.config(e), pxeHost)
	if err != nil {
		return kexec.Result{}, err
	}
	pxe := hosts[0]
	defer pxe.Close()
	bins, err := installAll(ctx, o.ssh, pxe, target)
	if err != nil {
		return kexec.Result{}, err
	}
	args := []string{"image", "boot", "--pxe-dir=" + pxeDir, "--instance=" + o.profile.Name, "--system=" + o.profile.System, "--json"}
	var out bytes.Buffer
	if err := runOnHost(ctx, pxe, bins[0], args, &out, o.progress); err != nil {
		return kexec.Result{}, err
	}
	var boot image.Boot
	if err := json.Unmarshal(out.Bytes(), &boot); err != nil {
		return kexec.Result{}, fmt.Errorf("kexec: %s: nbship image boot printed no JSON: %w", pxe.Name(), err)
	}
	plan, err := kexec.NewPlan(boot, base, fetch)
	if err != nil {
		return kexec.Result{}, err
	}
	if base == "" {
		fmt.Fprintf(o.progress, "nbship: no baseURL in the config: %s gets the files through this machine\n", target.Name())
	}
	ko := kexec.Options{Timeout: o.timeout, Log: o.progress}
	if fetch != kexec.FetchURL {
		ko.Send = func(ctx context.Context, name string, w io.Writer) error {
			return pxe.Run(ctx, remote.Cmd{Args: []string{"cat", "--", path.Join(boot.Dir, name)}, Stdout: w})
		}
	}
	res, err := kexec.Run(ctx, target, bins[1], plan, ko)
	var he *kexec.HostError
	if errors.As(err, &he) {
		return res, withCode(he.Status, err)
	}
	return res, err
}

func cmdKexecEnd(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, kexec.EndCommand, "(the plan comes as JSON on standard input)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("%s: unexpected argument %q", kexec.EndCommand, fs.Arg(0))
	}
	err := kexec.End(ctx, kexec.EndOptions{Stdin: e.stdin, Stdout: e.stdout, Stderr: e.stderr, Host: kexec.RealHost()})
	var re *kexec.RefusedError
	if errors.As(err, &re) {
		return withCode(kexec.ExitRefused, err)
	}
	return err
}
