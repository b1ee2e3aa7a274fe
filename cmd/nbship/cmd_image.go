package main

// nbship image: list, verify, publish, roll back and collect the netboot
// generations of the slots in a PXE host's pxeDir, here or (--host) on the
// PXE host over SSH. Package image does the work; this file is flags,
// output, and passing the subcommand on to the PXE host.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/remote"
	"github.com/nbship/nbship/transfer"
)

func init() {
	registerGroup("image", "list, verify, roll back and collect netboot generations on the PXE host",
		"They act on the pxeDir of this host (--pxe-dir DIR), or of the PXE host over SSH\n"+
			"(--host HOST; with --config FILE, pxeHost and pxeDir from it unless --local).\n",
		subcommand{"list", "list the generations of every slot, or of --instance", imageList},
		subcommand{"verify", "check an image directory, generation or slot against its instance type", imageVerify},
		subcommand{"publish", "publish an image directory (a build output) as the slot's new generation", imagePublish},
		subcommand{"rollback", "serve the previous generation again, or the one named by --to", imageRollback},
		subcommand{"gc", "remove generations beyond the newest --keep (never the current one)", imageGC},
		subcommand{"url", "print the netboot.ipxe URL a booting instance fetches", imageURL},
		subcommand{"boot", "print what a machine booting the slot loads: kernel, initrds, their SHA-256, the kernel's arguments", imageBoot},
	)
}

// imageFlags are the flags the image subcommands share.
type imageFlags struct {
	sub      string // "image list", for messages
	pxeDir   string
	config   string
	instance string
	system   string
	json     bool

	// Where the subcommand runs (the ones that act on a pxeDir).
	onPXE bool
	host  string
	local bool
	ssh   sshFlags

	cfg *config.Config
}

// addImageFlags registers --config, --instance and --system, and when the
// subcommand acts on a pxeDir, --pxe-dir, --host, --local and the SSH
// flags; --json when it has a JSON form.
func addImageFlags(fs *pflag.FlagSet, sub string, pxeDir, asJSON bool) *imageFlags {
	f := &imageFlags{sub: sub, onPXE: pxeDir}
	fs.StringVar(&f.config, "config", "", "builders.conf `FILE` to read pxeHost, pxeDir, instance, keepGenerations, baseURL and profile lines from")
	fs.StringVar(&f.instance, "instance", "", "instance `NAME`, like c2.large.arm (default: instance from --config)")
	fs.StringVar(&f.system, "system", "", "`SYSTEM` of an instance type nbship does not know: aarch64-linux or x86_64-linux (default: its profile line in --config)")
	if pxeDir {
		fs.StringVar(&f.pxeDir, "pxe-dir", "", "the `DIR` nginx serves (default: pxeDir from --config)")
		fs.StringVar(&f.host, "host", "", "run on this PXE `HOST` ([user@]host[:port] or an ssh config alias) over SSH, with nbship put there (default with --config: pxeHost)")
		fs.BoolVar(&f.local, "local", false, "act on this machine's --pxe-dir even though --config names a pxeHost")
		f.ssh.add(fs)
	}
	if asJSON {
		fs.BoolVar(&f.json, "json", false, "print the result as JSON")
	}
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
	extra := imageExtraProfiles(f.cfg)
	if f.system != "" {
		p, err := image.ForSystem(name, f.system)
		if err != nil {
			return image.Profile{}, usageError("%s: --system: %v", f.sub, err)
		}
		extra = append(extra, p)
	}
	return image.Lookup(name, extra)
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

// slotHere parses args (no positional ones), then runs the subcommand on
// the PXE host when that is where it acts (done), or else opens the slot
// here.
func (f *imageFlags) slotHere(ctx context.Context, e *env, fs *pflag.FlagSet, args []string) (s *image.Slot, done bool, err error) {
	if done, err := f.parseOnHost(ctx, e, fs, args, 0); done || err != nil {
		return nil, done, err
	}
	s, err = f.slot(e)
	return s, false, err
}

// parseOnHost parses args (at most max positional ones), then runs the
// subcommand on the PXE host when that is where it acts (done).
func (f *imageFlags) parseOnHost(ctx context.Context, e *env, fs *pflag.FlagSet, args []string, max int) (done bool, err error) {
	if err := f.parse(fs, args, max); err != nil {
		return false, err
	}
	return f.onHost(ctx, e, fs)
}

// keepSlot resolves --keep (the flag, else keepGenerations from the
// config; at least 1), then runs the subcommand on the PXE host when that
// is where it acts (done), or else opens the slot here.
func (f *imageFlags) keepSlot(ctx context.Context, e *env, fs *pflag.FlagSet, keep *int) (s *image.Slot, done bool, err error) {
	cfg, err := f.load()
	if err != nil {
		return nil, false, err
	}
	if !fs.Changed("keep") {
		*keep = cfg.Keep()
	}
	if *keep < 1 {
		return nil, false, usageError("%s: --keep %d: keep at least 1 generation", f.sub, *keep)
	}
	if done, err := f.onHost(ctx, e, fs, "keep", strconv.Itoa(*keep)); done || err != nil {
		return nil, true, err
	}
	s, err = f.slot(e)
	return s, false, err
}

// parse parses args, allowing at most max positional ones.
func (f *imageFlags) parse(fs *pflag.FlagSet, args []string, max int) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > max {
		return usageError("%s: unexpected argument %q", f.sub, fs.Arg(max))
	}
	return nil
}

// imageRow is a generation of an instance's slot, as list prints it.
type imageRow struct {
	Instance string `json:"instance"`
	image.Generation
}

func imageList(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image list", "[--instance NAME] [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image list", true, true)
	if done, err := f.parseOnHost(ctx, e, fs, args, 0); done || err != nil {
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
		return printJSON(e.stdout, rows)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Instance, r.Name, cur, r.Files, transfer.HumanBytes(r.Bytes), r.Time.UTC().Format(time.DateTime+"Z"))
	}
	return tw.Flush()
}

func imageVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image verify", "[DIR | GENERATION] --instance NAME [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image verify", true, true)
	if done, err := f.parseOnHost(ctx, e, fs, args, 1); done || err != nil {
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
		return printJSON(e.stdout, struct {
			Instance string `json:"instance"`
			image.Summary
		}{p.Name, sum})
	}
	_, err = fmt.Fprintf(e.stdout, "ok %s: %s %s, %s initrd, %d files, %s\n", dir, p.System, sum.Kernel, sum.Initrd, sum.Files, transfer.HumanBytes(sum.Bytes))
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
	s, done, err := f.slotHere(ctx, e, fs, args)
	if done || err != nil {
		return err
	}
	g, err := s.Rollback(ctx, *to)
	if err != nil {
		return err
	}
	before := g.Previous // read under the slot's lock
	if f.json {
		return printJSON(e.stdout, struct {
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
	if err := f.parse(fs, args, 0); err != nil {
		return err
	}
	s, done, err := f.keepSlot(ctx, e, fs, keep)
	if done || err != nil {
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
		return printJSON(e.stdout, struct {
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
	if err := f.parse(fs, args, 0); err != nil {
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
		return printJSON(e.stdout, struct {
			Instance string `json:"instance"`
			URL      string `json:"url"`
		}{p.Name, u})
	}
	_, err = fmt.Fprintln(e.stdout, u)
	return err
}

func imageBoot(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image boot", "--instance NAME [--pxe-dir DIR | --config FILE] [--json]")
	f := addImageFlags(fs, "image boot", true, true)
	s, done, err := f.slotHere(ctx, e, fs, args)
	if done || err != nil {
		return err
	}
	b, err := s.Boot()
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e.stdout, b)
	}
	fmt.Fprintf(e.stdout, "%s %s (%s)\n", b.Instance, b.Generation, b.System)
	for _, file := range append([]image.BootFile{b.Kernel}, b.Initrds...) {
		fmt.Fprintf(e.stdout, "%s  %s  %d\n", file.SHA256, file.Name, file.Size)
	}
	_, err = fmt.Fprintf(e.stdout, "kernel arguments: %s\n", strings.Join(b.Args, " "))
	return err
}

// imagePublished is what image publish reports (and nbship x86_64 reads).
// The byte and file counts name the same things as a shipped image's:
// files_sent are the files whose bytes were copied in, files_reused those
// hard-linked from the generation that was current.
type imagePublished struct {
	Instance   string  `json:"instance"`
	Generation string  `json:"generation"`
	Previous   string  `json:"previous"`
	Published  string  `json:"published"` // the slot, PXEDIR/hydra-INSTANCE
	Files      int     `json:"files"`
	FilesSent  int     `json:"files_sent"`
	Reused     int     `json:"files_reused"`
	Bytes      int64   `json:"bytes"` // copied
	TotalBytes int64   `json:"total_bytes"`
	Seconds    float64 `json:"seconds"`
	MBps       float64 `json:"mbps"`
}

func imagePublish(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "image publish", "--instance NAME [--system SYSTEM] [--keep N] [--pxe-dir DIR | --config FILE] [--host HOST] [--json] DIR")
	f := addImageFlags(fs, "image publish", true, true)
	keep := fs.Int("keep", 0, "generations to keep, newest first; the current one is kept too (default: keepGenerations from --config, else 3)")
	if err := f.parse(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return withHint(usageError("image publish: no image directory given"), "name the directory that holds the kernel, initrd and netboot.ipxe, like a Nix build's output")
	}
	s, done, err := f.keepSlot(ctx, e, fs, keep)
	if done || err != nil {
		return err
	}
	start := time.Now()
	staged, err := s.Stage()
	if err != nil {
		return err
	}
	src := fs.Arg(0)
	st, err := s.CopyImage(ctx, staged, src)
	if err != nil {
		s.Discard(staged)
		return err
	}
	g, err := s.Publish(ctx, staged, *keep)
	var ve *image.VerifyError
	if errors.As(err, &ve) {
		// Name the file the user gave, not its copy in the staging directory.
		if rel, rerr := filepath.Rel(staged, ve.Path); rerr == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
			ve = &image.VerifyError{Path: filepath.Join(src, rel), Msg: ve.Msg}
		}
		serves := "nothing"
		if cur, _ := s.Current(); cur != "" {
			serves = cur
		}
		return withHint(withCode(protocol.ExitRefused, ve), "nothing was published: %s still serves %s", s.Path(), serves)
	}
	if err != nil {
		return err
	}
	before := g.Previous // read under the slot's lock, not stale
	res := imagePublished{
		Instance: s.Profile().Name, Generation: g.Name, Previous: before, Published: s.Path(),
		Files: st.Files, FilesSent: st.Copied, Reused: st.Linked, Bytes: st.Bytes, TotalBytes: st.Total,
		Seconds: protocol.Round(time.Since(start).Seconds(), 3),
	}
	if res.Seconds > 0 {
		res.MBps = protocol.Round(float64(res.Bytes)/1e6/res.Seconds, 1)
	}
	if f.json {
		return printJSON(e.stdout, res)
	}
	printPublished(e.stderr, "nbship: ", res)
	if before == "" {
		_, err = fmt.Fprintf(e.stdout, "%s: serving %s\n", res.Published, g.Name)
	} else {
		_, err = fmt.Fprintf(e.stdout, "%s: serving %s (was %s)\n", res.Published, g.Name, before)
	}
	return err
}

// printPublished writes the figures of a publish as one line.
func printPublished(w io.Writer, prefix string, r imagePublished) {
	fmt.Fprintf(w, "%spublished %d files (%d copied, %d already there), %s copied of %s in %.2fs\n",
		prefix, r.Files, r.FilesSent, r.Reused, transfer.HumanBytes(r.Bytes), transfer.HumanBytes(r.TotalBytes), r.Seconds)
}

// imageLocalFlags are the flags that say where a subcommand runs or how to
// reach the host: they are not passed on to the host.
var imageLocalFlags = map[string]bool{
	"host": true, "local": true, "config": true,
	"known-hosts": true, "accept-new": true, "ssh-config": true, "identity": true, "remote-nbship": true,
}

// remoteHost is where the subcommand runs: --host, else pxeHost from
// --config unless --local; "" means here.
func (f *imageFlags) remoteHost() (string, error) {
	if !f.onPXE {
		return "", nil
	}
	if f.local && f.host != "" {
		return "", usageError("%s: --host and --local: give one", f.sub)
	}
	if f.local || f.host != "" {
		return f.host, nil
	}
	if f.config == "" {
		return "", nil
	}
	cfg, err := f.load()
	if err != nil {
		return "", err
	}
	return cfg.PXEHost, nil
}

// onHost runs the subcommand on the PXE host instead of here, when --host
// or the config says so, and reports whether it did. The flags given on
// the command line go along (but those of imageLocalFlags), plus what this
// side read from the config: pxeDir, instance, the instance's profile line,
// and resolved (name, value pairs, such as the keep the config set),
// unless the command line gave them. nbship on the host never reads a
// config file; it is told everything.
func (f *imageFlags) onHost(ctx context.Context, e *env, fs *pflag.FlagSet, resolved ...string) (bool, error) {
	host, err := f.remoteHost()
	if err != nil || host == "" {
		return false, err
	}
	args, err := f.remoteArgs(fs, resolved...)
	if err != nil {
		return true, err
	}
	hosts, err := dialAll(ctx, f.ssh.config(e), host)
	if err != nil {
		return true, err
	}
	c := hosts[0]
	defer c.Close()
	bin, err := f.ssh.install(ctx, c)
	if err != nil {
		return true, err
	}
	return true, runOnHost(ctx, c, bin, args, e.stdout, e.stderr)
}

// remoteArgs is the command line for nbship on the host (see onHost).
func (f *imageFlags) remoteArgs(fs *pflag.FlagSet, resolved ...string) ([]string, error) {
	args := []string{"image", strings.TrimPrefix(f.sub, "image ")}
	fs.Visit(func(fl *pflag.Flag) {
		if !imageLocalFlags[fl.Name] {
			args = append(args, "--"+fl.Name+"="+fl.Value.String())
		}
	})
	cfg, err := f.load()
	if err != nil {
		return nil, err
	}
	pass := func(name, value string) {
		if value != "" && !fs.Changed(name) {
			args = append(args, "--"+name+"="+value)
		}
	}
	pxe, err := f.pxe()
	if err != nil {
		return nil, err
	}
	pass("pxe-dir", pxe)
	inst, err := f.instanceName()
	if err != nil {
		return nil, err
	}
	pass("instance", inst)
	for _, p := range cfg.Profiles {
		if p.Name == inst {
			pass("system", p.System)
		}
	}
	for i := 0; i+1 < len(resolved); i += 2 {
		pass(resolved[i], resolved[i+1])
	}
	args = append(args, "--")
	return append(args, fs.Args()...), nil
}

// runOnHost runs nbship (at bin on host) with args, its stdout copied to
// stdout and its stderr to stderr as it comes. When it fails, its last
// lines, "nbship: WHAT" and maybe "nbship: hint: ...", are not copied but
// returned as the error, named after the host and with its exit status, so
// that the reason is said once, last, as for a local failure.
func runOnHost(ctx context.Context, host *remote.Client, bin string, args []string, stdout, stderr io.Writer) error {
	h := &heldLines{w: stderr}
	err := host.Run(ctx, remote.Cmd{Args: append([]string{bin}, args...), Stdout: stdout, Stderr: h})
	var ee *remote.ExitError
	if !errors.As(err, &ee) {
		h.flush()
		return err
	}
	msg, hint := h.failure()
	if msg == "" {
		return withCode(ee.Status, fmt.Errorf("%s: nbship %s exited with status %d", host.Name(), strings.Join(args[:min(2, len(args))], " "), ee.Status))
	}
	err = withCode(ee.Status, fmt.Errorf("%s: %s", host.Name(), msg))
	if hint != "" {
		return withHint(err, "%s", hint)
	}
	return err
}

// heldLines copies lines to w, holding back the last two until more come
// or flush: on failure they are the remote nbship's error and hint.
type heldLines struct {
	w       io.Writer
	partial []byte
	held    [][]byte
}

func (h *heldLines) Write(b []byte) (int, error) {
	h.partial = append(h.partial, b...)
	for {
		i := bytes.IndexByte(h.partial, '\n')
		if i < 0 {
			break
		}
		h.held = append(h.held, append([]byte(nil), h.partial[:i+1]...))
		h.partial = h.partial[i+1:]
		if len(h.held) > 2 {
			h.w.Write(h.held[0])
			h.held = h.held[1:]
		}
	}
	return len(b), nil
}

// lines returns the held lines, an unfinished last one included, and
// forgets them.
func (h *heldLines) lines() [][]byte {
	ls := h.held
	if len(h.partial) > 0 {
		ls = append(ls, append(h.partial, '\n'))
	}
	h.held, h.partial = nil, nil
	return ls
}

func (h *heldLines) flush() {
	for _, l := range h.lines() {
		h.w.Write(l)
	}
}

// failure takes the error (and hint) nbship printed last, and copies the
// other held lines.
func (h *heldLines) failure() (msg, hint string) {
	ls := h.lines()
	const p, hp = "nbship: ", "nbship: hint: "
	text := func(i int) string { return strings.TrimSuffix(string(ls[i]), "\n") }
	n := len(ls)
	switch {
	case n >= 2 && strings.HasPrefix(text(n-1), hp) && strings.HasPrefix(text(n-2), p):
		msg, hint = strings.TrimPrefix(text(n-2), p), strings.TrimPrefix(text(n-1), hp)
		n -= 2
	case n >= 1 && strings.HasPrefix(text(n-1), p) && !strings.HasPrefix(text(n-1), hp):
		msg = strings.TrimPrefix(text(n-1), p)
		n--
	}
	for _, l := range ls[:n] {
		h.w.Write(l)
	}
	return msg, hint
}
