package main

// nbship builders: transient builders on any provider (Hetzner Cloud,
// Packet), one verb each: create, list, get, delete, prices. `spot` and
// `device` stay as Packet's own commands.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/version"
	"github.com/nbship/nbship/metal"
	"github.com/nbship/nbship/provider"
	"github.com/nbship/nbship/provider/hetzner"
	"github.com/nbship/nbship/provider/packet"
	"github.com/nbship/nbship/remote"
)

func init() {
	registerGroup("builders", "transient builders on Hetzner Cloud or Packet: create, list, delete, prices", "",
		subcommand{"create", "make a builder (costs money until deleted)", buildersCreate},
		subcommand{"list", "list the builders nbship made, on every configured provider", buildersList},
		subcommand{"get", "show one builder", buildersGet},
		subcommand{"delete", "delete builders (they stop costing money)", buildersDelete},
		subcommand{"prices", "what each server type costs per location", buildersPrices},
	)
}

// bootSetup is what booting a new builder needs besides the machine:
// where the image is published (the config) and how to reach that host.
type bootSetup struct {
	cfg *config.Config
	ssh *sshFlags
}

// builderBoot boots the published image of instance on a server that
// answers SSH on c, as nbship kexec does; nil: create stops at the rescue
// system and says what to run (the tests set their own).
var builderBoot = bootByKexec

// bootByKexec kexecs the current generation of instance's slot on c and
// says what runs there now.
func bootByKexec(ctx context.Context, e *env, b bootSetup, c *remote.Client, instance string) error {
	if b.cfg.PXEHost == "" || b.cfg.PXEDir == "" {
		return withHint(usageError("builders create: booting --instance %s needs pxeHost and pxeDir", instance),
			"pass --config builders.conf, the file nbship aarch64 publishes with")
	}
	p, err := image.Lookup(instance, imageExtraProfiles(b.cfg))
	if err != nil {
		return usageError("builders create: %v", err)
	}
	res, err := kexecHost(ctx, e, kexecOptions{cfg: b.cfg, profile: p, timeout: 10 * time.Minute, ssh: b.ssh, progress: e.stderr}, c)
	if err != nil {
		return err
	}
	key := ""
	if res.HostKey != "" {
		// known_hosts holds the rescue system's key for this address
		// (trust on first use above): say how to swap it for the image's.
		key = fmt.Sprintf("; its host key is now %s, the image's own: check it, then replace the rescue system's line ('ssh-keygen -R %s') with it in known_hosts", res.HostKey, knownHostsName(c.Addr().String()))
	}
	fmt.Fprintf(e.stderr, "nbship: %s runs %s %s: answers SSH again after %.0fs%s\n", res.Host, res.Instance, res.Generation, res.Seconds, key)
	return nil
}

// hetznerPoll is how often a running action is polled; the tests shorten it.
var hetznerPoll = hetzner.DefaultPollInterval

// builderFlags are the flags every builders subcommand has.
type builderFlags struct {
	provider string
	config   string
	apiURL   string
	json     bool
}

func addBuilderFlags(fs *pflag.FlagSet, providerHelp string) *builderFlags {
	b := &builderFlags{}
	fs.StringVar(&b.provider, "provider", "", providerHelp)
	fs.StringVar(&b.config, "config", "", "builders.conf `FILE` to read hcloudToken, packetKey and packetProjectId from (the environment wins)")
	fs.StringVar(&b.apiURL, "api-url", "", "API base `URL` of the provider (default $HCLOUD_ENDPOINT or $PACKET_API_URL)")
	fs.BoolVar(&b.json, "json", false, "print the result as JSON")
	return b
}

// parse parses args (no positional ones), checks --provider (empty allowed
// where all providers are meant) and reads --config.
func (b *builderFlags) parse(fs *pflag.FlagSet, args []string, sub string, all bool) (*config.Config, error) {
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return nil, err
	}
	if err := checkProvider(sub, b.provider, all); err != nil {
		return nil, err
	}
	return b.loadConfig()
}

func (b *builderFlags) loadConfig() (*config.Config, error) {
	if b.config == "" {
		return &config.Config{}, nil
	}
	return config.Load(b.config)
}

// checkProvider checks --provider; empty is allowed only where all is.
func checkProvider(name, p string, all bool) error {
	switch p {
	case hetzner.Name, packet.Name:
		return nil
	case "":
		if all {
			return nil
		}
		return usageError("%s: no --provider given: hetzner or packet", name)
	}
	return usageError("%s: --provider %q is not hetzner or packet", name, p)
}

// hetznerToken is HCLOUD_TOKEN, else hcloudToken from the config. The
// token is never taken from the command line.
func hetznerToken(e *env, cfg *config.Config) string {
	if t := e.getenv("HCLOUD_TOKEN"); t != "" {
		return t
	}
	return cfg.HcloudToken
}

func packetConfigured(e *env, cfg *config.Config) bool {
	return e.getenv("PACKET_AUTH_TOKEN") != "" || cfg.PacketKey != ""
}

func hetznerClient(e *env, cfg *config.Config, apiURL string) (*hetzner.Client, error) {
	token := hetznerToken(e, cfg)
	if strings.TrimSpace(token) == "" {
		return nil, withHint(errors.New("hetzner: no API token"),
			"export HCLOUD_TOKEN=..., or pass --config FILE with a line 'hcloudToken TOKEN'")
	}
	if apiURL == "" {
		apiURL = e.getenv("HCLOUD_ENDPOINT")
	}
	return hetzner.New(hetzner.Options{
		Token:        token,
		Endpoint:     apiURL,
		PollInterval: hetznerPoll,
		Application:  "nbship/" + version.Version,
	})
}

// openProvider checks --provider (required), reads --config and opens
// that provider.
func (b *builderFlags) openProvider(e *env, sub string) (provider.Provider, error) {
	if err := checkProvider(sub, b.provider, false); err != nil {
		return nil, err
	}
	cfg, err := b.loadConfig()
	if err != nil {
		return nil, err
	}
	return b.open(e, cfg, b.provider)
}

// open makes the named provider's client.
func (b *builderFlags) open(e *env, cfg *config.Config, name string) (provider.Provider, error) {
	if name == hetzner.Name {
		return hetznerClient(e, cfg, b.apiURL)
	}
	pf := &packetFlags{config: b.config, apiURL: b.apiURL}
	c, err := pf.client(e, cfg)
	if err != nil {
		return nil, err
	}
	return packet.New(c), nil
}

// builderErr adds the hint that goes with a provider's error.
func builderErr(name string, err error) error {
	var nf *hetzner.NotFoundError
	var ae *hetzner.APIError
	var hk *remote.HostKeyError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, hetzner.ErrUnauthorized):
		return withHint(err, "HCLOUD_TOKEN (or hcloudToken in the --config file) must be a read & write API token of the project")
	case errors.As(err, &nf) && nf.Foreign:
		return withHint(err, "nbship deletes only the servers it made; delete others in the Hetzner Cloud console")
	case errors.As(err, &nf) && nf.What != "server":
		return withHint(err, "see what there is: nbship builders prices --provider hetzner")
	case errors.As(err, &nf):
		return withHint(err, "see the builders: nbship builders list --provider hetzner")
	case errors.As(err, &ae) && ae.Status == 429:
		return withHint(err, "the API is rate-limiting this token; wait a few minutes and run it again")
	case errors.As(err, &ae) && ae.Status >= 500:
		return withHint(err, "the API is failing; run it again later")
	case errors.As(err, &hk) && hk.Changed:
		return withHint(err, "the address was another server's before: check the fingerprint in the console, then remove the old line (ssh-keygen -R %s)", hk.Addr)
	case errors.Is(err, packet.ErrNotBuilder):
		return withHint(err, "nbship builders list --provider packet shows the builders; 'nbship device' handles the other devices")
	}
	if name == packet.Name {
		return packetErr(err)
	}
	return err
}

// readPublicKey reads the operator's public key: path (a .pub file, or a
// private key whose .pub is beside it), else the first of
// ~/.ssh/id_ed25519.pub, id_ecdsa.pub, id_rsa.pub.
func readPublicKey(e *env, path string) (string, error) {
	var tries []string
	if path != "" {
		tries = []string{path}
		if !strings.HasSuffix(path, ".pub") {
			tries = []string{path + ".pub", path}
		}
	} else {
		home := e.getenv("HOME")
		for _, n := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
			tries = append(tries, filepath.Join(home, ".ssh", n))
		}
	}
	for _, p := range tries {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("builders: SSH public key: %w", err)
		}
		line := strings.TrimSpace(string(b))
		if _, err := hetzner.Fingerprint(line); err != nil {
			return "", fmt.Errorf("builders: %s is not an SSH public key (one authorized_keys line)", p)
		}
		return line, nil
	}
	return "", withHint(fmt.Errorf("builders: no SSH public key at %s", strings.Join(tries, ", ")),
		"pass --ssh-key PATH.pub: the rescue system lets in only that key")
}

func buildersCreate(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "builders create", "--provider hetzner|packet --type T --location L --name N [--instance NAME] [flags]")
	bf := addBuilderFlags(fs, "hetzner or packet (required)")
	var r provider.CreateRequest
	fs.StringVar(&r.Type, "type", "", "server type or plan, like cax21 (hetzner) or c2.large.arm (packet) (required)")
	fs.StringVar(&r.Location, "location", "", "location or metro, like fsn1 (hetzner) or da (packet) (required)")
	fs.StringVar(&r.Name, "name", "", "host name of the builder (required)")
	instance := fs.String("instance", "", "instance `NAME` whose published image the builder boots")
	fs.StringVar(&r.Image, "image", hetzner.DefaultImage, "hetzner: image on the disk; the rescue system boots instead")
	sshKey := fs.String("ssh-key", "", "hetzner: `PATH` of the public key the rescue system lets in (default ~/.ssh/id_ed25519.pub)")
	sshPort := fs.Int("ssh-port", 22, "hetzner: SSH port of the new server")
	sshTimeout := fs.Duration("ssh-timeout", hetzner.DefaultSSHTimeout, "hetzner: how long to wait for SSH on the new server")
	fs.Float64Var(&r.MaxBid, "max-bid", 0, "packet: highest spot price in `USD` per hour")
	fs.StringVar(&r.IPXEURL, "ipxe-url", "", "packet: `URL` of the netboot.ipxe to boot (default from --instance and --base-url)")
	baseURL := fs.String("base-url", "", "packet: where pxeDir is served (default baseURL from --config)")
	fs.StringArrayVar(&r.Tags, "tag", nil, "packet: tag for the device (repeatable; default hydra)")
	yes := fs.Bool("yes", false, "create without asking")
	dryRun := fs.Bool("dry-run", false, "print what would be done and send nothing")
	var sf sshFlags
	sf.add(fs)
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if err := checkProvider("builders create", bf.provider, false); err != nil {
		return err
	}
	if *sshPort < 1 || *sshPort > 65535 {
		return usageError("builders create: --ssh-port %d is not 1-65535", *sshPort)
	}
	if *sshTimeout <= 0 {
		return usageError("builders create: --ssh-timeout must be positive, like 5m")
	}
	cfg, err := bf.loadConfig()
	if err != nil {
		return err
	}

	var plan any
	switch bf.provider {
	case hetzner.Name:
		if r.SSHPublicKey, err = readPublicKey(e, *sshKey); err != nil {
			return err
		}
		p, err := hetzner.DryRun(r)
		if err != nil {
			return usageError("%v", err)
		}
		if *instance == "" {
			p.Steps = p.Steps[:len(p.Steps)-1]
		} else {
			p.Steps[len(p.Steps)-1] = "kexec the published image of " + *instance
		}
		plan = p
	case packet.Name:
		if r.IPXEURL == "" && *instance != "" {
			base := *baseURL
			if base == "" {
				base = cfg.BaseURL
			}
			if base == "" {
				return withHint(usageError("builders create: --instance needs --base-url (or baseURL in the --config file) on packet"),
					"--base-url is where pxeDir is served over HTTP, like http://my.netboot.server/")
			}
			if r.IPXEURL, err = spotIPXEURL(base, *instance); err != nil {
				return usageError("builders create: %v", err)
			}
		}
		body, err := packet.DryRun(r)
		if err != nil {
			return usageError("%v", err)
		}
		plan = map[string]any{"provider": packet.Name, "post": "projects/PROJECT/spot-market-requests", "body": jsonRaw(body)}
	}
	if *dryRun {
		fmt.Fprintf(e.stderr, "%s: dry run: nothing sent\n", bf.provider)
		return printJSON(e.stdout, plan)
	}
	if !*yes && !isTerminal(e.stdin) {
		return withHint(fmt.Errorf("%s: not creating a builder without confirmation (standard input is not a terminal)", bf.provider),
			"check the cost with 'nbship builders prices --provider %s --type %s' or --dry-run, then run again with --yes", bf.provider, r.Type)
	}
	p, err := bf.open(e, cfg, bf.provider)
	if err != nil {
		return err
	}
	arch, err := showCost(ctx, e, p, r)
	if err != nil {
		return builderErr(bf.provider, err)
	}
	if bf.provider == hetzner.Name && *instance != "" {
		// The kexec would refuse it only once the server bills.
		if err := checkBootable(cfg, *instance, r.Type, arch); err != nil {
			return err
		}
	}
	if !*yes {
		fmt.Fprintf(e.stderr, "Create the builder? Type yes to go on: ")
		if ok, err := spotConfirm(e.stdin); err != nil || !ok {
			if err != nil {
				return fmt.Errorf("builders: reading the answer: %w", err)
			}
			return fmt.Errorf("%s: not created (the answer was not yes)", bf.provider)
		}
	}
	r.Progress = e.stderr
	s, err := p.Create(ctx, r)
	if err != nil {
		return builderErr(bf.provider, err)
	}
	if bf.json {
		if err := printJSON(e.stdout, s); err != nil {
			return err
		}
	} else {
		where := s.IPv4
		if where == "" {
			where = "no address yet"
		}
		fmt.Fprintf(e.stdout, "%s builder %s (%s) created: %s in %s, %s, %s\n", s.Provider, s.ID, s.Name, s.Type, s.Location, where, s.Status)
	}
	if bf.provider != hetzner.Name {
		return nil
	}

	gone := fmt.Sprintf("the server keeps running, and costing money: delete it with 'nbship builders delete --provider hetzner %s'", s.ID)
	if s.IPv4 == "" {
		return withHint(fmt.Errorf("hetzner: server %s has no public IPv4 address to reach it by", s.ID), "%s", gone)
	}
	dest := "root@" + net.JoinHostPort(s.IPv4, strconv.Itoa(*sshPort))
	o := hetzner.SSHOptions{Config: sf.config(e), Timeout: *sshTimeout, Log: e.stderr}
	err = hetzner.Ready(ctx, dest, o, func(ctx context.Context, c *remote.Client) error {
		switch {
		case *instance == "":
			fmt.Fprintf(e.stderr, "hetzner: %s is in its rescue system; no --instance, so nothing is booted\n", dest)
		case builderBoot == nil:
			fmt.Fprintf(e.stderr, "hetzner: %s is in its rescue system; boot the image with: nbship kexec %s --instance %s\n", dest, dest, *instance)
		default:
			return builderBoot(ctx, e, bootSetup{cfg: cfg, ssh: &sf}, c, *instance)
		}
		return nil
	})
	if err != nil {
		return withHint(builderErr(hetzner.Name, err), "%s", gone)
	}
	return nil
}

// jsonRaw is JSON that is printed as it is.
type jsonRaw []byte

func (j jsonRaw) MarshalJSON() ([]byte, error) { return j, nil }

// showCost says what the builder costs, before it is made, and returns
// the architecture of the server type where the provider names it.
func showCost(ctx context.Context, e *env, p provider.Provider, r provider.CreateRequest) (string, error) {
	if pc, ok := p.(*packet.Client); ok {
		q, err := pc.Quote(ctx, r)
		if err != nil {
			return "", err
		}
		spotPrintQuote(e.stderr, q)
		return "", nil
	}
	ps, err := p.Prices(ctx, provider.PriceQuery{Type: r.Type, Location: r.Location})
	if err != nil {
		return "", err
	}
	if len(ps) == 0 {
		return "", withHint(fmt.Errorf("%s: %s has no price in %s: it is not offered there", p.Name(), r.Type, r.Location),
			"see where it is offered: nbship builders prices --provider %s --type %s", p.Name(), r.Type)
	}
	c := ps[0]
	fmt.Fprintf(e.stderr, "%s: %s (%s) in %s costs %s/h, at most %s/month (%s); it is billed until it is deleted\n",
		p.Name(), c.Type, c.Arch, c.Location, money(c.Hourly, c.Currency), money(c.Monthly, c.Currency), c.Note)
	return c.Arch, nil
}

// checkBootable refuses, before a server is made, an instance the server
// type cannot boot: one nbship does not know, or one of another
// architecture.
func checkBootable(cfg *config.Config, instance, serverType, arch string) error {
	prof, err := image.Lookup(instance, imageExtraProfiles(cfg))
	if err != nil {
		return usageError("builders create: --instance %s: %v", instance, err)
	}
	if sys := provider.System(arch); sys != "" && sys != prof.System {
		return withHint(usageError("builders create: not creating: server type %s is %s, but the image of --instance %s is %s", serverType, arch, instance, prof.System),
			"pick a server type of that architecture: nbship builders prices --provider hetzner")
	}
	return nil
}

func money(v float64, currency string) string {
	switch currency {
	case "EUR":
		return fmt.Sprintf("€%.4f", v)
	case "USD":
		return fmt.Sprintf("$%.4f", v)
	}
	return fmt.Sprintf("%.4f %s", v, currency)
}

func buildersList(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "builders list", "[--provider hetzner|packet] [flags]")
	bf := addBuilderFlags(fs, "hetzner or packet (default: every configured one)")
	cfg, err := bf.parse(fs, args, "builders list", true)
	if err != nil {
		return err
	}
	names := []string{bf.provider}
	if bf.provider == "" {
		if bf.apiURL != "" {
			return usageError("builders list: --api-url needs --provider")
		}
		names = nil
		if hetznerToken(e, cfg) != "" {
			names = append(names, hetzner.Name)
		}
		if packetConfigured(e, cfg) {
			names = append(names, packet.Name)
		}
		if len(names) == 0 {
			return withHint(errors.New("builders: no provider is configured"),
				"export HCLOUD_TOKEN=... (or PACKET_AUTH_TOKEN and PACKET_PROJECT_ID), or pass --config FILE with hcloudToken or packetKey")
		}
	}
	all := []provider.Server{}
	for _, n := range names {
		p, err := bf.open(e, cfg, n)
		if err != nil {
			return err
		}
		ss, err := p.List(ctx)
		if err != nil {
			return builderErr(n, err)
		}
		all = append(all, ss...)
		running := 0
		for _, s := range ss {
			if s.Status != "waiting" {
				running++
			}
		}
		fmt.Fprintf(e.stderr, "%s: %d builders\n", n, running)
	}
	if bf.json {
		return printJSON(e.stdout, all)
	}
	if len(all) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tID\tNAME\tTYPE\tLOCATION\tARCH\tIPV4\tSTATUS\tPRICE")
	for _, s := range all {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/h\n", s.Provider, s.ID, s.Name, s.Type, s.Location, s.Arch, dash(s.IPv4), s.Status, money(s.Hourly, s.Currency))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func buildersGet(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "builders get", "--provider hetzner|packet ID [flags]")
	bf := addBuilderFlags(fs, "hetzner or packet (required)")
	pos, err := parseArgs(fs, args, 1, "the builder's ID")
	if err != nil {
		return err
	}
	p, err := bf.openProvider(e, "builders get")
	if err != nil {
		return err
	}
	s, err := p.Get(ctx, pos[0])
	if err != nil {
		return builderErr(bf.provider, err)
	}
	if bf.json {
		return printJSON(e.stdout, s)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"provider", s.Provider}, {"id", s.ID}, {"name", s.Name}, {"type", s.Type}, {"location", s.Location},
		{"arch", s.Arch}, {"ipv4", dash(s.IPv4)}, {"ipv6", dash(s.IPv6)}, {"status", s.Status},
		{"price", money(s.Hourly, s.Currency) + "/h"}, {"labels", dash(strings.Join(s.Labels, ","))},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", kv[0], kv[1])
	}
	if !s.Created.IsZero() {
		fmt.Fprintf(tw, "created\t%s\n", s.Created.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func buildersDelete(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "builders delete", "--provider hetzner|packet ID... [flags]")
	bf := addBuilderFlags(fs, "hetzner or packet (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError("builders delete: want the IDs of the builders to delete ('nbship builders list' shows them)")
	}
	p, err := bf.openProvider(e, "builders delete")
	if err != nil {
		return err
	}
	var failed []string
	var first error
	for _, id := range slices.Compact(fs.Args()) {
		if err := p.Delete(ctx, id); err != nil {
			if first == nil {
				first = builderErr(bf.provider, err)
			} else {
				fmt.Fprintf(e.stderr, "nbship: %v\n", err)
			}
			failed = append(failed, id)
			continue
		}
		fmt.Fprintf(e.stdout, "%s builder %s deleted\n", bf.provider, id)
	}
	if len(failed) > 1 {
		return fmt.Errorf("builders: %d of %d not deleted (%s); first: %w", len(failed), fs.NArg(), strings.Join(failed, ", "), first)
	}
	return first
}

func buildersPrices(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "builders prices", "--provider hetzner|packet [--type T] [--location L] [flags]")
	bf := addBuilderFlags(fs, "hetzner or packet (required)")
	var q provider.PriceQuery
	fs.StringVar(&q.Type, "type", "", "only this server type or plan")
	fs.StringVar(&q.Location, "location", "", "only this location or metro")
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	p, err := bf.openProvider(e, "builders prices")
	if err != nil {
		return err
	}
	ps, err := p.Prices(ctx, q)
	if err != nil {
		return builderErr(bf.provider, err)
	}
	if bf.json {
		return printJSON(e.stdout, ps)
	}
	if len(ps) == 0 {
		return fmt.Errorf("%s: no price matches (type %q, location %q)", bf.provider, q.Type, q.Location)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tLOCATION\tARCH\tHOURLY\tMONTHLY\tNOTE")
	for _, pr := range ps {
		monthly := "-"
		if pr.Monthly > 0 {
			monthly = money(pr.Monthly, pr.Currency)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", pr.Type, pr.Location, dash(pr.Arch), money(pr.Hourly, pr.Currency), monthly, pr.Note)
	}
	return tw.Flush()
}

// hetznerDevices lists the Hetzner builders as devices for the machines
// file, and the Nix system of each server type.
func hetznerDevices(ctx context.Context, c *hetzner.Client, systems map[string]string) ([]metal.Device, error) {
	ss, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []metal.Device
	for _, s := range ss {
		state := s.Status
		if s.Running {
			state = "active"
		}
		tags := []string{"hydra"}
		for _, l := range s.Labels {
			k, _, _ := strings.Cut(l, "=")
			if k != hetzner.LabelKey && !slices.Contains(tags, k) {
				tags = append(tags, k)
			}
		}
		out = append(out, metal.Device{ID: s.ID, Hostname: s.Name, State: state, Plan: s.Type, PublicIPv4: s.IPv4, Tags: tags})
		if _, ok := systems[s.Type]; !ok {
			if sys := provider.System(s.Arch); sys != "" {
				systems[s.Type] = sys
			}
		}
	}
	return out, nil
}

// knownHostsName is how known_hosts names addr: host, or [host]:port
// when the port is not 22.
func knownHostsName(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if port == "22" {
		return host
	}
	return "[" + host + "]:" + port
}
