package main

import (
	"context"
	"time"

	"github.com/nbship/nbship/internal/ends"
	"github.com/nbship/nbship/transfer"
)

func init() {
	register(command{name: "send", plumbing: true, summary: "send files from the build host (the dialling end of the channel)", run: cmdSend})
	// relay was send's name: what was written for it by hand still runs.
	register(command{name: "relay", hidden: true, summary: "the old name of send", run: cmdSend})
}

func cmdSend(ctx context.Context, e *env, args []string) error {
	limitMemory(e)
	fs := newFlagSet(e, "send", "(--connect ADDR | --stdio) --peer-pin PIN|- [--store | --store-files] [flags] PATH...")
	connect := fs.String("connect", "", "the receiver's `HOST:PORT`")
	level := fs.String("level", "auto", "zstd `LEVEL`: auto (better on a link much slower than the compressor), fastest, default or better")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "how long to keep trying to reach the receiver")
	lanes := lanesFlag(fs)
	store := fs.Bool("store", false, "send the closure of the store PATHs as Nix store paths, for recv --store (no PATH or -: one per line on standard input, before or after the pin line, up to an empty line)")
	signKey := fs.String("sign-key", "", "with --store: sign each path on the way with this Nix secret key `file` of this host, as nix store sign would (the store is left as it is)")
	storeFiles := fs.Bool("store-files", false, "send the files of the store PATHs, each as a top-level entry named by its base name, for recv --dest (PATHs as with --store)")
	anyLink := fs.Bool("follow-any-symlink", false, "follow symlinks wherever they lead (default: only those that stay inside the PATH they are found under or lead into /nix/store; others are refused)")
	ef := addEndFlags(e, fs, "receiver")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkLanes("send", *lanes); err != nil {
		return err
	}
	lvl, err := transfer.EncoderLevel(*level)
	if err != nil {
		return usageError("send: %v", err)
	}
	var src ends.Source = ends.Files{Paths: fs.Args(), FollowAnySymlink: *anyLink}
	switch {
	case *store && *storeFiles:
		return usageError("send: give at most one of --store and --store-files")
	case *signKey != "" && !*store:
		return usageError("send: --sign-key goes with --store")
	case *store || *storeFiles:
		args := fs.Args()
		src = ends.StorePaths{
			Paths: args, Stdin: len(args) == 0 || len(args) == 1 && args[0] == "-",
			Files: *storeFiles, FollowAnySymlink: *anyLink, SignKey: *signKey,
		}
	}
	s, err := ends.Send(ctx, ends.SendOptions{Channel: ef.channel("send"), Connect: *connect, DialTimeout: *dialTimeout, Lanes: *lanes, Level: lvl, Source: src})
	if err != nil {
		return err
	}
	printSummary(ef.out(), ef.json, "sent", *s, *store)
	return nil
}
