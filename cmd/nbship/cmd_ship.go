package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nbship/nbship/internal/config"
	"github.com/nbship/nbship/internal/controller"
	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/remote"
	"github.com/nbship/nbship/transfer"
)

func init() {
	register(command{name: "ship", summary: "move store paths between two hosts' Nix stores (or into a directory), directly", run: cmdShip})
}

// localHost is the HOST that means this machine.
const localHost = "local"

// defaultPort is the receiver's port for the direct path without a config.
const defaultPort = 61616

func cmdShip(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "ship", "--from HOST --to HOST (--store | --dest DIR) [flags] [PATH...|-]")
	from := fs.String("from", "", "`HOST` that has the paths: an SSH destination, or local (default: the config's buildHost)")
	to := fs.String("to", "", "`HOST` to ship to: an SSH destination, or local (default: the config's pxeHost)")
	store := fs.Bool("store", false, "import the closure of the paths into the receiving host's Nix store (only the paths it lacks)")
	dest := fs.String("dest", "", "put the files of the paths in this `DIR` on the receiving host, one entry per path, named by its base name")
	signKey := fs.String("sign-key", "", "with --store: sign each path on the way with this Nix secret key `FILE` on the sending host (read there by nbship; never sent)")
	substitute := fs.BoolP("substitute-on-destination", "s", false, "with --store: the receiving host first gets what it can from its own substituters; only the rest is sent")
	replace := fs.Bool("replace", false, "with --dest: replace a non-empty directory atomically")
	anyLink := fs.Bool("follow-any-symlink", false, "with --dest: the sender follows symlinks wherever they lead (default: only into the path they are found under or /nix/store)")
	pathFlag := fs.String("path", controller.PathAuto, "how the data travels, `MODE`: auto (direct, else over SSH), direct, or ssh")
	dialTimeout := fs.Duration("dial-timeout", 5*time.Second, "how long the sender tries the direct path before auto falls back to SSH")
	lanes := lanesFlag(fs)
	listenPort := fs.Int("listen-port", 0, "the receiver's TCP `PORT` for the direct path; 0 lets it pick one (default: the config's opensslPort, else 61616)")
	connect := fs.String("connect", "", "`HOST:PORT` the sender dials for the direct path (default: the config's opensslServer:opensslPort, else the --to host's name)")
	level := fs.String("level", "auto", "zstd `LEVEL`: auto (better on a link much slower than the compressor), fastest, default or better")
	retries := fs.Int("retries", 2, "try the transfer again this many `N` times when an end or the link fails (a retry sends only what has not arrived)")
	cfgPath := fs.String("config", "", "builders.conf `FILE` for the defaults above")
	asJSON := fs.Bool("json", false, "print a JSON summary on stdout")
	var sf sshFlags
	sf.add(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *store == (*dest != "") {
		return usageError("ship: give exactly one of --store or --dest DIR")
	}
	if err := checkLanes("ship", *lanes); err != nil {
		return err
	}
	if *replace && *store {
		return usageError("ship: --replace goes with --dest")
	}
	if *anyLink && *store {
		return usageError("ship: --follow-any-symlink goes with --dest")
	}
	if (*signKey != "" || *substitute) && !*store {
		return usageError("ship: --sign-key and --substitute-on-destination go with --store")
	}
	if *retries < 0 {
		return usageError("ship: --retries %d is negative", *retries)
	}
	if _, err := transfer.EncoderLevel(*level); err != nil {
		return usageError("ship: %v", err)
	}
	if err := checkPath("ship", *pathFlag); err != nil {
		return err
	}

	// The paths first: a bad line fails before any host is reached.
	var paths []string
	var err error
	if fs.NArg() == 0 || fs.NArg() == 1 && fs.Arg(0) == "-" {
		paths, err = nixstore.ReadPaths(e.stdin, "standard input", false)
	} else {
		paths, err = nixstore.CheckPaths(fs.Args())
	}
	if err != nil {
		return usageError("ship: %v", err)
	}
	if len(paths) == 0 {
		return usageError("ship: no store paths (give them as arguments or one per line on standard input)")
	}

	var cfg *config.Config
	if *cfgPath != "" {
		if cfg, err = loadConfig(*cfgPath); err != nil {
			return err
		}
		*from = firstOf(*from, cfg.BuildHost)
		*to = firstOf(*to, cfg.PXEHost)
	}
	if *from == "" || *to == "" {
		return usageError("ship: --from HOST and --to HOST are required (or --config with buildHost and pxeHost)")
	}
	port := *listenPort
	if !fs.Changed("listen-port") {
		port = defaultPort
		if cfg != nil && cfg.OpenSSLPort != 0 {
			port = cfg.OpenSSLPort
		}
	}
	if port < 0 || port > 65535 {
		return usageError("ship: --listen-port %d is not a TCP port", port)
	}
	path := *pathFlag
	addr := *connect
	if addr == "" && cfg != nil && cfg.OpenSSLServer != "" {
		addr = net.JoinHostPort(cfg.OpenSSLServer, strconv.Itoa(port))
	}
	if addr == "" {
		switch {
		case *to != localHost:
			addr = net.JoinHostPort(destHost(*to), strconv.Itoa(port))
		case *from == localHost:
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		case path == controller.PathDirect:
			return usageError("ship: --path direct with --to local needs --connect HOST:PORT (where %s reaches this machine)", *from)
		default:
			// Nothing tells where the sender reaches this machine.
			path = controller.PathSSH
		}
	}
	start := time.Now()

	ends, closeEnds, err := shipEnds(ctx, e, &sf, *from, *to)
	if err != nil {
		return err
	}
	defer closeEnds()
	// Before any data moves: with --store both ends need Nix (asked on both
	// at once, while nbship is put in place; the receiver's answer is
	// reported first).
	nixErrs := make([]error, len(ends))
	var checks sync.WaitGroup
	if *store {
		for i := range ends {
			checks.Go(func() { nixErrs[i] = controller.CheckNixStore(ctx, ends[i]) })
		}
	}
	ierr := installEnds(ctx, &sf, ends)
	checks.Wait()
	for _, err := range []error{nixErrs[1], nixErrs[0], ierr} {
		if err != nil {
			return err
		}
	}
	src, dst := ends[0], ends[1]

	ship := &controller.Ship{
		From: src,
		To:   dst,
		Send: protocol.Send{
			Connect:          addr,
			DialTimeout:      *dialTimeout,
			Lanes:            *lanes,
			Store:            *store,
			StoreFiles:       !*store,
			Paths:            paths,
			FollowAnySymlink: *anyLink,
			SignKey:          *signKey, // the key file's path only: the sender reads it on its host
			Level:            *level,
		},
		Recv: protocol.Recv{Listen: ":" + strconv.Itoa(port), Store: *store, Substitute: *substitute, Dest: *dest, Replace: *replace},
		Path: path,
		Log:  e.stderr,
	}
	closure := ""
	if *store {
		closure = " (and their closure)"
	}
	fmt.Fprintf(e.stderr, "nbship: shipping %d store paths%s from %s to %s\n", len(paths), closure, *from, *to)
	res, err := shipWithRetries(ctx, e, ship, *retries)
	if err != nil {
		if *store && *retries > 0 {
			sweepKeptNARs(dst, e)
		}
		return err
	}
	var s protocol.Stream
	if err := json.Unmarshal(res.Send, &s); err != nil {
		return fmt.Errorf("ship: the sender's summary %q: %w", res.Send, err)
	}
	if res.Path == controller.PathSSH {
		s.WireBytes = res.WireBytes
	}
	var rs protocol.Stream
	if *store && len(res.Recv) > 0 {
		if err := json.Unmarshal(res.Recv, &rs); err != nil {
			return fmt.Errorf("ship: the receiver's summary %q: %w", res.Recv, err)
		}
	}
	out := protocol.Ship{
		PathsTotal: s.Files, PathsSent: s.FilesSent, PathsSkipped: s.Reused - rs.Substituted,
		PathsSubstituted: rs.Substituted, SubstitutedBytes: rs.SubstitutedBytes,
		Bytes: s.Bytes, Resumed: s.Resumed, Compressed: s.Compressed, WireBytes: s.WireBytes,
		Seconds: s.Seconds, MBps: s.MBps, Path: res.Path, Lanes: s.Lanes,
		TotalSeconds: protocol.Round(time.Since(start).Seconds(), 2),
	}
	if !*store {
		// The stream counted files; the paths all went.
		out.Files = s.Files
		out.PathsTotal, out.PathsSent, out.PathsSkipped = len(paths), len(paths), 0
		out.Published = *dest
	}
	if *asJSON {
		return printJSON(e.stdout, out)
	}
	what := "imported into " + *to
	if !*store {
		what = "put in " + *to + ":" + *dest
	}
	subst := ""
	if *substitute {
		subst = fmt.Sprintf(", %d from its substituters", out.PathsSubstituted)
	}
	fmt.Fprintf(e.stdout, "%d store paths %s (%d sent, %d already there%s): %s raw, %s on the wire in %.2fs, %.1f MB/s (%s path)\n",
		out.PathsTotal, what, out.PathsSent, out.PathsSkipped, subst, transfer.HumanBytes(out.Bytes), transfer.HumanBytes(out.WireBytes), out.Seconds, out.MBps, out.Path)
	return nil
}

// sweepKeptNARs removes, after the last attempt failed, what earlier ones
// kept on the receiving host for a retry (the last attempt's receiver
// removes what it found, but not what an attempt stopped with it, an
// interrupt, left). Best effort, with its own deadline: the run's context
// may be the one that was cancelled.
func sweepKeptNARs(dst controller.End, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dst.Run(ctx, []string{dst.Bin, sweepKeptCommand}, e.stderr)
}

// destHost is the host name of an SSH destination [user@]host[:port].
func destHost(dest string) string {
	if i := strings.LastIndexByte(dest, '@'); i >= 0 {
		dest = dest[i+1:]
	}
	if h, _, err := net.SplitHostPort(dest); err == nil {
		return h
	}
	return strings.Trim(dest, "[]")
}

// shipEnds makes the two ends: this machine for "local", else a host
// reached over SSH (both dialled at once). The returned function closes
// the connections.
func shipEnds(ctx context.Context, e *env, sf *sshFlags, hosts ...string) ([]controller.End, func(), error) {
	ends := make([]controller.End, len(hosts))
	var dests []string
	for _, h := range hosts {
		if h != localHost {
			dests = append(dests, h)
		}
	}
	var clients []*remote.Client
	if len(dests) > 0 {
		var err error
		if clients, err = dialAll(ctx, sf.config(e), dests...); err != nil {
			return nil, nil, err
		}
	}
	closeAll := func() {
		for _, c := range clients {
			c.Close()
		}
	}
	self, err := os.Executable()
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	k := 0
	for i, h := range hosts {
		if h == localHost {
			ends[i] = controller.End{Runner: controller.Local{}, Bin: self}
			continue
		}
		ends[i] = controller.End{Host: clients[k]}
		k++
	}
	return ends, closeAll, nil
}

// installEnds puts nbship on the ends that are remote hosts.
func installEnds(ctx context.Context, sf *sshFlags, ends []controller.End) error {
	var hosts []*remote.Client
	var idx []int
	for i, end := range ends {
		if end.Host != nil {
			hosts = append(hosts, end.Host)
			idx = append(idx, i)
		}
	}
	if len(hosts) == 0 {
		return nil
	}
	bins, err := installAll(ctx, sf, hosts...)
	if err != nil {
		return err
	}
	for k, i := range idx {
		ends[i].Bin = bins[k]
	}
	return nil
}
