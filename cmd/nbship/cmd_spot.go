package main

// nbship spot: spot market requests and prices. The Packet wiring shared
// with cmd_device.go and cmd_machines.go (credentials, --json, errors with
// hints) is here too.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/version"
	"github.com/nbship/nbship/metal"
)

func init() {
	registerGroup("spot", "spot market requests and prices on Packet (Equinix Metal)", "",
		subcommand{"create", "ask the spot market for builders (costs money)", spotCreate},
		subcommand{"list", "list the project's spot market requests", spotList},
		subcommand{"get", "show one spot market request and its devices", spotGet},
		subcommand{"cancel", "cancel a spot market request (--force: terminate its devices too)", spotCancel},
		subcommand{"prices", "current spot prices per metro or facility", spotPrices},
	)
}

// packetBackoff is the first wait between retries of a failed API request;
// the tests shorten it.
var packetBackoff = metal.DefaultBackoff

// packetFlags are the flags every Packet subcommand has.
type packetFlags struct {
	config string
	apiURL string
	json   bool
}

func addPacketFlags(fs *pflag.FlagSet) *packetFlags {
	p := &packetFlags{}
	fs.StringVar(&p.config, "config", "", "builders.conf `FILE` to read packetKey and packetProjectId from (the environment wins)")
	fs.StringVar(&p.apiURL, "api-url", "", "API base `URL` (default $PACKET_API_URL, else "+metal.DefaultAPIURL+")")
	fs.BoolVar(&p.json, "json", false, "print the result as JSON")
	return p
}

// loadConfig reads --config, or returns an empty Config without one.
func (p *packetFlags) loadConfig() (*config.Config, error) {
	if p.config == "" {
		return &config.Config{}, nil
	}
	return config.Load(p.config)
}

// client makes an API client from the environment (PACKET_AUTH_TOKEN,
// PACKET_PROJECT_ID, PACKET_API_URL), then --config. The token is only
// ever read from there: there is no flag for it, so it is never on a
// command line.
func (p *packetFlags) client(e *env, cfg *config.Config) (*metal.Client, error) {
	token := e.getenv("PACKET_AUTH_TOKEN")
	if token == "" {
		token = cfg.PacketKey
	}
	project := e.getenv("PACKET_PROJECT_ID")
	if project == "" {
		project = cfg.PacketProjectID
	}
	apiURL := p.apiURL
	if apiURL == "" {
		apiURL = e.getenv("PACKET_API_URL")
	}
	if strings.TrimSpace(token) == "" {
		return nil, withHint(errors.New("packet: no API token"),
			"export PACKET_AUTH_TOKEN=..., or pass --config FILE with a line 'packetKey TOKEN'")
	}
	return metal.New(metal.Options{
		Token:     token,
		ProjectID: project,
		APIURL:    apiURL,
		Backoff:   packetBackoff,
		UserAgent: "nbship/" + version.Version,
	})
}

// setup parses the flags and makes the client; most subcommands start so.
func (p *packetFlags) setup(e *env) (*metal.Client, *config.Config, error) {
	cfg, err := p.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	c, err := p.client(e, cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, cfg, nil
}

// parse is parseArgs and setup, for the subcommands that check nothing
// in between.
func (p *packetFlags) parse(e *env, fs *pflag.FlagSet, args []string, n int, names string) ([]string, *metal.Client, error) {
	pos, err := parseArgs(fs, args, n, names)
	if err != nil {
		return nil, nil, err
	}
	c, _, err := p.setup(e)
	if err != nil {
		return nil, nil, err
	}
	return pos, c, nil
}

// packetErr adds the hint that goes with an API error.
func packetErr(err error) error {
	var ae *metal.APIError
	var np *metal.NoPriceError
	var ue *url.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		if h := ae.Hint(); h != "" {
			return withHint(err, "%s", h)
		}
	case errors.Is(err, metal.ErrNoProject):
		return withHint(err, "export PACKET_PROJECT_ID=UUID, or pass --config FILE with a line 'packetProjectId UUID'")
	case errors.As(err, &np):
		return withHint(err, "see where it is offered: nbship spot prices --plan %s", np.Plan)
	case errors.As(err, &ue):
		return withHint(err, "check --api-url (or PACKET_API_URL) and the network")
	}
	return err
}

func spotCreate(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "spot create", "--plan P (--metro M | --facility F...) --max-bid USD --max N --hostname H (--ipxe-url URL | --instance NAME [--base-url URL]) [flags]")
	pf := addPacketFlags(fs)
	var r metal.CreateRequest
	fs.StringVar(&r.Plan, "plan", "", "plan slug, like c2.large.arm (required)")
	fs.StringVar(&r.Metro, "metro", "", "metro code, like da")
	fs.StringArrayVar(&r.Facilities, "facility", nil, "facility code, like dfw2 (repeat for several; instead of --metro)")
	fs.Float64Var(&r.MaxBid, "max-bid", 0, "highest price in `USD` per device and hour (required)")
	fs.IntVar(&r.Min, "min", 1, "fewest devices to make")
	fs.IntVar(&r.Max, "max", 1, "most devices to make")
	fs.StringVar(&r.Hostname, "hostname", "", "host name of the devices (required)")
	fs.StringVar(&r.IPXEURL, "ipxe-url", "", "`URL` of the netboot.ipxe the devices boot")
	baseURL := fs.String("base-url", "", "where pxeDir is served (default baseURL from --config); with --instance instead of --ipxe-url")
	instance := fs.String("instance", "", "instance `NAME` whose published image to boot: BASE-URL/hydra-NAME/netboot.ipxe")
	fs.StringArrayVar(&r.Tags, "tag", nil, "tag for the devices (repeatable; 'nbship machines' looks for hydra)")
	fs.BoolVar(&r.AlwaysPXE, "always-pxe", false, "boot over iPXE on every boot, not only the first")
	userdata := fs.String("userdata", "", "`FILE` whose contents are the devices' userdata")
	yes := fs.Bool("yes", false, "create without asking")
	dryRun := fs.Bool("dry-run", false, "print the request body and send nothing")
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	cfg, err := pf.loadConfig()
	if err != nil {
		return err
	}
	switch {
	case r.IPXEURL != "" && (*instance != "" || *baseURL != ""):
		return usageError("spot create: give --ipxe-url or --instance (with --base-url), not both")
	case r.IPXEURL == "" && *instance == "":
		return withHint(usageError("spot create: no iPXE script: give --ipxe-url URL or --instance NAME"),
			"--instance c2.large.arm boots BASE-URL/hydra-c2.large.arm/netboot.ipxe, as 'nbship image url' prints")
	case r.IPXEURL == "":
		base := *baseURL
		if base == "" {
			base = cfg.BaseURL
		}
		if base == "" {
			return withHint(usageError("spot create: --instance needs --base-url (or baseURL in the --config file)"),
				"--base-url is where pxeDir is served over HTTP, like http://my.netboot.server/")
		}
		if r.IPXEURL, err = spotIPXEURL(base, *instance); err != nil {
			return usageError("spot create: %v", err)
		}
	}
	if *userdata != "" {
		if r.UserData, err = spotReadUserdata(*userdata); err != nil {
			return err
		}
	}
	if err := r.Validate(); err != nil {
		return usageError("%v", err)
	}

	if *dryRun {
		body, err := r.Body()
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "spot: dry run: would POST this to projects/PROJECT/spot-market-requests; nothing sent\n")
		_, err = fmt.Fprintf(e.stdout, "%s\n", body)
		return err
	}
	interactive := isTerminal(e.stdin)
	if !*yes && !interactive {
		return withHint(errors.New("spot: not creating a spot request without confirmation (standard input is not a terminal)"),
			"check the cost with 'nbship spot prices --plan %s' or --dry-run, then run again with --yes", r.Plan)
	}

	c, err := pf.client(e, cfg)
	if err != nil {
		return err
	}
	q, err := c.Quote(ctx, &r)
	if err != nil {
		return packetErr(err)
	}
	spotPrintQuote(e.stderr, q)
	if !*yes {
		fmt.Fprintf(e.stderr, "This might be expensive. Create the spot request? Type yes to go on: ")
		if ok, err := spotConfirm(e.stdin); err != nil || !ok {
			if err != nil {
				return fmt.Errorf("spot: reading the answer: %w", err)
			}
			return errors.New("spot: not created (the answer was not yes)")
		}
	}
	req, err := c.Create(ctx, &r)
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		return printJSON(e.stdout, req)
	}
	_, err = fmt.Fprintf(e.stdout, "spot request %s created: %d-%d × %s in %s, max bid $%.2f/h each\n",
		req.ID, req.Min, req.Max, req.Plan, req.Location(), req.MaxBid)
	return err
}

// spotIPXEURL is where a booting machine of instance finds its script, the
// URL 'nbship image url' prints: BASE/hydra-INSTANCE/netboot.ipxe.
func spotIPXEURL(base, instance string) (string, error) {
	if instance == "" || instance == "." || instance == ".." || len(instance) > 100 ||
		strings.IndexFunc(instance, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
		}) >= 0 {
		return "", fmt.Errorf("instance name %q must be letters, digits, '.', '-' or '_' (like c2.large.arm)", instance)
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("base URL %q must be an absolute http:// or https:// URL, like http://my.netboot.server/", base)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("base URL %q must not carry a query, fragment or user", base)
	}
	return u.JoinPath("hydra-"+instance, "netboot.ipxe").String(), nil
}

func spotReadUserdata(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("spot: userdata: %w", err)
	}
	defer f.Close()
	const limit = 1 << 20
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return "", fmt.Errorf("spot: userdata: %w", err)
	}
	if len(b) > limit {
		return "", fmt.Errorf("spot: userdata %s is larger than 1 MiB", path)
	}
	return string(b), nil
}

// spotConfirm reads one line and reports whether it is "yes".
func spotConfirm(r io.Reader) (bool, error) {
	var line []byte
	var b [1]byte
	for len(line) < 64 {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return false, err
		}
	}
	return strings.TrimSpace(string(line)) == "yes", nil
}

func spotPrintQuote(w io.Writer, q *metal.Quote) {
	var now []string
	for _, p := range q.Prices {
		now = append(now, fmt.Sprintf("%s $%.2f/h", p.Location, p.Price))
	}
	fmt.Fprintf(w, "spot: %s spot price now: %s\n", q.Plan, strings.Join(now, ", "))
	fmt.Fprintf(w, "spot: worst case: %d × $%.2f max bid = $%.2f/h ($%.2f/day); at the current price: $%.2f/h\n",
		q.Max, q.MaxBid, q.Worst, q.Worst*24, q.Current)
	if q.BelowMarket() {
		fmt.Fprintf(w, "spot: warning: the max bid is below the current price; the request waits until the price drops\n")
	}
}

func spotList(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "spot list", "[flags]")
	pf := addPacketFlags(fs)
	_, c, err := pf.parse(e, fs, args, 0, "no arguments")
	if err != nil {
		return err
	}
	rs, err := c.Requests(ctx)
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		if rs == nil {
			rs = []metal.Request{}
		}
		return printJSON(e.stdout, rs)
	}
	if len(rs) == 0 {
		fmt.Fprintln(e.stderr, "spot: no spot market requests in the project")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPLAN\tLOCATION\tMIN\tMAX\tMAX BID\tDEVICES")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t$%.2f/h\t%d\n", r.ID, r.Plan, r.Location(), r.Min, r.Max, r.MaxBid, len(r.Devices))
	}
	return tw.Flush()
}

func spotGet(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "spot get", "ID [flags]")
	pf := addPacketFlags(fs)
	pos, c, err := pf.parse(e, fs, args, 1, "the spot request ID")
	if err != nil {
		return err
	}
	r, err := c.Request(ctx, pos[0])
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		return printJSON(e.stdout, r)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\n", r.ID)
	fmt.Fprintf(tw, "plan\t%s\n", r.Plan)
	fmt.Fprintf(tw, "location\t%s\n", r.Location())
	fmt.Fprintf(tw, "devices\t%d to %d, %d now\n", r.Min, r.Max, len(r.Devices))
	fmt.Fprintf(tw, "max bid\t$%.2f/h per device\n", r.MaxBid)
	if r.Hostname != "" {
		fmt.Fprintf(tw, "hostname\t%s\n", r.Hostname)
	}
	if r.IPXEURL != "" {
		fmt.Fprintf(tw, "ipxe script\t%s\n", r.IPXEURL)
	}
	if len(r.Tags) > 0 {
		fmt.Fprintf(tw, "tags\t%s\n", strings.Join(r.Tags, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Devices) > 0 {
		fmt.Fprintln(e.stdout)
		return deviceTable(e.stdout, r.Devices)
	}
	return nil
}

func spotCancel(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "spot cancel", "ID [--force] [flags]")
	pf := addPacketFlags(fs)
	force := fs.Bool("force", false, "also terminate the devices the request made")
	pos, c, err := pf.parse(e, fs, args, 1, "the spot request ID")
	if err != nil {
		return err
	}
	if err := c.Cancel(ctx, pos[0], *force); err != nil {
		return packetErr(err)
	}
	if pf.json {
		return printJSON(e.stdout, map[string]any{"id": pos[0], "cancelled": true, "devices_terminated": *force})
	}
	msg := "its devices keep running"
	if *force {
		msg = "its devices are being terminated"
	}
	_, err = fmt.Fprintf(e.stdout, "spot request %s cancelled; %s\n", pos[0], msg)
	return err
}

func spotPrices(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "spot prices", "[--plan P] [--by metro|facility] [flags]")
	pf := addPacketFlags(fs)
	plan := fs.String("plan", "", "only this plan, like c2.large.arm")
	by := fs.String("by", "metro", "prices per metro or per facility")
	if _, err := parseArgs(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if *by != "metro" && *by != "facility" {
		return usageError("spot prices: --by must be metro or facility, not %q", *by)
	}
	c, _, err := pf.setup(e)
	if err != nil {
		return err
	}
	ps, err := c.Prices(ctx, *by == "facility", *plan)
	if err != nil {
		return packetErr(err)
	}
	if pf.json {
		return printJSON(e.stdout, ps)
	}
	if len(ps) == 0 {
		if *plan != "" {
			return fmt.Errorf("spot: no %s has a spot price for plan %s", *by, *plan)
		}
		return errors.New("spot: the API lists no spot prices")
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\tPLAN\tPRICE\n", strings.ToUpper(*by))
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t$%.2f/h\n", p.Location, p.Plan, p.Price)
	}
	return tw.Flush()
}

// packetTimeout checks a --timeout value.
func packetTimeout(name string, d time.Duration) error {
	if d <= 0 {
		return usageError("%s: --timeout must be positive, like 10m", name)
	}
	return nil
}
