package main

// nbship image: list, verify, roll back and collect the netboot generations
// of the slots in a PXE host's pxeDir. Package image does the work; this
// file is flags and output.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/config"
)

func init() {
	register(command{name: "image", summary: "list, verify, roll back and collect netboot generations on the PXE host", run: cmdImage})
}

type imageSub struct {
	name, summary string
	run           func(ctx context.Context, e *env, args []string) error
}

var imageSubs = []imageSub{
	{"list", "list the generations of every slot, or of --instance", imageList},
	{"verify", "check an image directory, generation or slot against its instance type", imageVerify},
	{"rollback", "serve the previous generation again, or the one named by --to", imageRollback},
	{"gc", "remove generations beyond the newest --keep (never the current one)", imageGC},
	{"url", "print the netboot.ipxe URL a booting instance fetches", imageURL},
}

func cmdImage(ctx context.Context, e *env, args []string) error {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: nbship image SUBCOMMAND [flags] [args]\n\nsubcommands:\n")
		for _, s := range imageSubs {
			fmt.Fprintf(w, "  %-9s %s\n", s.name, s.summary)
		}
		fmt.Fprintf(w, "\nThey act on this host's pxeDir (--pxe-dir, or pxeDir from --config).\nrun 'nbship image SUBCOMMAND --help' for its flags\n")
	}
	if len(args) == 0 {
		usage(e.stderr)
		return usageError("image: no subcommand given")
	}
	switch args[0] {
	case "help", "-h", "--help":
		usage(e.stdout)
		return nil
	}
	for _, s := range imageSubs {
		if s.name == args[0] {
			return s.run(ctx, e, args[1:])
		}
	}
	return withHint(usageError("image: unknown subcommand %q", args[0]), "run 'nbship image help' for the list")
}

// imageFlags are the flags the image subcommands share.
type imageFlags struct {
	sub      string // "image list", for messages
	pxeDir   string
	config   string
	instance string
	json     bool

	cfg *config.Config
}

// addImageFlags registers --config and --instance, and --pxe-dir and
// --json when the subcommand uses them.
func addImageFlags(fs *pflag.FlagSet, sub string, pxeDir, asJSON bool) *imageFlags {
	f := &imageFlags{sub: sub}
	fs.StringVar(&f.config, "config", "", "builders.conf `FILE` to read pxeDir, instance, keepGenerations, baseURL and profile lines from")
	fs.StringVar(&f.instance, "instance", "", "instance `NAME`, like c2.large.arm (default: instance from --config)")
	if pxeDir {
		fs.StringVar(&f.pxeDir, "pxe-dir", "", "the `DIR` nginx serves (default: pxeDir from --config)")
	}
	if asJSON {
		fs.BoolVar(&f.json, "json", false, "print the result as JSON")
	}
	// ---- --host goes here (not implemented yet) ----
	// --host HOST will run the same subcommand on the PXE host over SSH
	// (default: pxeHost from --config) instead of on this machine: register
	// it here, and right after parseFlags in each subcommand, when it is
	// set, start `nbship image SUB ARGS` (without --host) there through
	// package remote, copy its stdout and stderr to e's and return its exit
	// status. Everything in this file below acts locally.
	return f
}

// load reads --config once; without it the Config is empty (defaults).
func (f *imageFlags) load() (*config.Config, error) {
	if f.cfg != nil {
		return f.cfg, nil
	}
	if f.config == "" {
		f.cfg = &config.Config{}
		return f.cfg, nil
	}
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	f.cfg = cfg
	return cfg, nil
}

func (f *imageFlags) pxe() (string, error) {
	cfg, err := f.load()
	if err != nil {
		return "", err
	}
	if f.pxeDir != "" {
		return f.pxeDir, nil
	}
	if cfg.PXEDir != "" {
		return cfg.PXEDir, nil
	}
	if f.config != "" {
		return "", &config.MissingError{Path: cfg.Path, Key: "pxeDir", Example: "pxeDir          /var/lib/nginx/netboot/"}
	}
	return "", withHint(usageError("%s: no PXE directory given", f.sub), "pass --pxe-dir DIR, or --config FILE with a pxeDir line")
}

// instanceName is --instance, else instance from the config, else "".
func (f *imageFlags) instanceName() (string, error) {
	cfg, err := f.load()
	if err != nil {
		return "", err
	}
	if f.instance != "" {
		return f.instance, nil
	}
	return cfg.Instance, nil
}

func (f *imageFlags) profile() (image.Profile, error) {
	name, err := f.instanceName()
	if err != nil {
		return image.Profile{}, err
	}
	if name == "" {
		return image.Profile{}, withHint(usageError("%s: --instance NAME is required", f.sub), "name the instance type, like --instance c2.large.arm, or set instance in the config")
	}
	return image.Lookup(name, imageExtraProfiles(f.cfg))
}

func imageExtraProfiles(cfg *config.Config) []image.Profile {
	var ps []image.Profile
	for _, p := range cfg.Profiles {
		ps = append(ps, image.Profile{Name: p.Name, System: p.System})
	}
	return ps
}

// slot opens the slot of --instance in the PXE directory; notes from it go
// to stderr.
func (f *imageFlags) slot(e *env) (*image.Slot, error) {
	p, err := f.profile()
	if err != nil {
		return nil, err
	}
	return imageOpenSlot(e, f, p)
}

func imageOpenSlot(e *env, f *imageFlags, p image.Profile) (*image.Slot, error) {
	pxe, err := f.pxe()
	if err != nil {
		return nil, err
	}
	s, err := image.OpenSlot(pxe, p)
	if err != nil {
		return nil, err
	}
	s.Logf = func(format string, a ...any) { fmt.Fprintf(e.stderr, "nbship: "+format+"\n", a...) }
	return s, nil
}

func imageArgs(fs *pflag.FlagSet, sub string, max int) error {
	if fs.NArg() > max {
		return usageError("%s: unexpected argument %q", sub, fs.Arg(max))
	}
	return nil
}

func imageJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// imageRow is a generation of an instance's slot, as list prints it.
type imageRow struct {
	Instance string `json:"instance"`
	image.Generation
}

func imageList(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image list", "[--instance NAME] [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image list", true, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := imageArgs(fs, "image list", 0); err != nil {
		return err
	}
	pxe, err := f.pxe()
	if err != nil {
		return err
	}
	name, err := f.instanceName()
	if err != nil {
		return err
	}
	instances := []string{name}
	if name == "" {
		if instances, err = image.Instances(pxe); err != nil {
			return err
		}
	}
	rows := []imageRow{}
	for _, inst := range instances {
		p, err := image.Lookup(inst, imageExtraProfiles(f.cfg))
		if err != nil {
			if err := image.ValidName(inst); err != nil {
				return err
			}
			p = image.Profile{Name: inst} // listing needs no architecture
		}
		s, err := imageOpenSlot(e, f, p)
		if err != nil {
			return err
		}
		gens, err := s.List()
		if err != nil {
			return err
		}
		if cur, _ := s.Current(); cur == "" {
			if fi, err := os.Lstat(s.Path()); err == nil {
				what := "a plain directory"
				if !fi.IsDir() {
					what = "not a link to a generation"
				}
				fmt.Fprintf(e.stderr, "nbship: %s is %s, as the old scripts left it; the next publish or rollback keeps it as a generation\n", s.Path(), what)
			}
		}
		for _, g := range gens {
			rows = append(rows, imageRow{inst, g})
		}
	}
	if f.json {
		return imageJSON(e.stdout, rows)
	}
	if len(rows) == 0 {
		fmt.Fprintf(e.stderr, "nbship: no generations in %s\n", pxe)
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tGENERATION\tCURRENT\tFILES\tSIZE\tPUBLISHED")
	for _, r := range rows {
		cur := ""
		if r.Current {
			cur = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Instance, r.Name, cur, r.Files, imageSize(r.Bytes), r.Time.UTC().Format(time.DateTime+"Z"))
	}
	return tw.Flush()
}

func imageVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image verify", "[DIR | GENERATION] --instance NAME [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image verify", true, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := imageArgs(fs, "image verify", 1); err != nil {
		return err
	}
	p, err := f.profile()
	if err != nil {
		return err
	}
	var dir string
	switch arg := fs.Arg(0); {
	case arg == "":
		// The slot itself: what booting machines get now.
		s, err := imageOpenSlot(e, f, p)
		if err != nil {
			return err
		}
		dir = s.Path()
	case imageExists(arg) || (f.pxeDir == "" && f.config == ""):
		dir = arg
	default:
		// A generation of the slot, by name or counter.
		s, err := imageOpenSlot(e, f, p)
		if err != nil {
			return err
		}
		g, err := s.Find(arg)
		if err != nil {
			return withHint(err, "give an image directory, or a generation from 'nbship image list --instance %s'", p.Name)
		}
		dir = g.Dir
	}
	sum, err := image.Inspect(dir, p)
	if err != nil {
		return err
	}
	if f.json {
		return imageJSON(e.stdout, struct {
			Instance string `json:"instance"`
			image.Summary
		}{p.Name, sum})
	}
	_, err = fmt.Fprintf(e.stdout, "ok %s: %s %s, %s initrd, %d files, %s\n", dir, p.System, sum.Kernel, sum.Initrd, sum.Files, imageSize(sum.Bytes))
	return err
}

func imageExists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

func imageRollback(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image rollback", "--instance NAME [--to GENERATION] [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image rollback", true, true)
	to := fs.String("to", "", "the `GENERATION` to serve, by name or counter (default: the one before the current)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := imageArgs(fs, "image rollback", 0); err != nil {
		return err
	}
	s, err := f.slot(e)
	if err != nil {
		return err
	}
	before, err := s.Current()
	if err != nil {
		return err
	}
	g, err := s.Rollback(ctx, *to)
	if err != nil {
		return err
	}
	if f.json {
		return imageJSON(e.stdout, struct {
			Instance string `json:"instance"`
			Previous string `json:"previous"`
			image.Generation
		}{s.Profile().Name, before, g})
	}
	switch before {
	case g.Name:
		_, err = fmt.Fprintf(e.stdout, "%s: already serving %s\n", s.Path(), g.Name)
	case "":
		_, err = fmt.Fprintf(e.stdout, "%s: serving %s\n", s.Path(), g.Name)
	default:
		_, err = fmt.Fprintf(e.stdout, "%s: serving %s (was %s)\n", s.Path(), g.Name, before)
	}
	return err
}

func imageGC(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image gc", "--instance NAME [--keep N] [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image gc", true, true)
	keep := fs.Int("keep", 0, "generations to keep, newest first; the current one is kept too (default: keepGenerations from --config, else 3)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := imageArgs(fs, "image gc", 0); err != nil {
		return err
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	if !fs.Changed("keep") {
		*keep = cfg.Keep()
	}
	if *keep < 1 {
		return usageError("image gc: --keep %d: keep at least 1 generation", *keep)
	}
	s, err := f.slot(e)
	if err != nil {
		return err
	}
	removed, err := s.GC(ctx, *keep)
	if err != nil {
		return err
	}
	if removed == nil {
		removed = []string{}
	}
	if f.json {
		return imageJSON(e.stdout, struct {
			Instance string   `json:"instance"`
			Keep     int      `json:"keep"`
			Removed  []string `json:"removed"`
		}{s.Profile().Name, *keep, removed})
	}
	if len(removed) == 0 {
		fmt.Fprintf(e.stderr, "nbship: %s: nothing to remove, keeping %d\n", s.Path(), *keep)
	}
	for _, r := range removed {
		fmt.Fprintln(e.stdout, r)
	}
	return nil
}

func imageURL(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image url", "--base-url URL --instance NAME [--config FILE] [--json]")
	f := addImageFlags(fs, "image url", false, true)
	base := fs.String("base-url", "", "`URL` where pxeDir is served over HTTP (default: baseURL from --config)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := imageArgs(fs, "image url", 0); err != nil {
		return err
	}
	p, err := f.profile()
	if err != nil {
		return err
	}
	if *base == "" {
		*base = f.cfg.BaseURL
	}
	if *base == "" {
		return withHint(usageError("image url: no base URL given"), "pass --base-url http://my.netboot.server/, or --config FILE with a baseURL line")
	}
	u, err := image.URL(*base, p.Name)
	if err != nil {
		return err
	}
	if f.json {
		return imageJSON(e.stdout, struct {
			Instance string `json:"instance"`
			URL      string `json:"url"`
		}{p.Name, u})
	}
	_, err = fmt.Fprintln(e.stdout, u)
	return err
}

// imageSize is a byte count for people.
func imageSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
