package main

import (
	"context"
	"time"

	"github.com/nbship/nbship/image"
	"github.com/nbship/nbship/internal/ends"
)

func init() {
	register(command{name: "recv", plumbing: true, summary: "receive files on the PXE host (the listening end of the channel)", run: cmdRecv})
}

func cmdRecv(ctx context.Context, e *env, args []string) error {
	limitMemory(e)
	fs := newFlagSet(e, "recv", "(--listen ADDR | --stdio) (--dest DIR | --pxe-dir DIR | --store) --peer-pin PIN|- [flags]")
	listen := fs.String("listen", "", "`HOST:PORT` to listen on (port 0 picks a free one, printed on the second line)")
	dest := fs.String("dest", "", "`DIR` to land the files in; it must not exist or be empty")
	replace := fs.Bool("replace", false, "replace a non-empty --dest atomically")
	publish := fs.String("pxe-dir", "", "publish a netboot image as a new generation of slot hydra-INSTANCE in this pxeDir `DIR` (instead of --dest)")
	fs.StringVar(publish, "publish", "", "the old name of --pxe-dir")
	fs.MarkHidden("publish")
	instance := fs.String("instance", "", "instance type of the slot, with --pxe-dir")
	system := fs.String("system", "", "system of an instance type nbship does not know (aarch64-linux or x86_64-linux), with --pxe-dir")
	keep := fs.Int("keep", image.DefaultKeep, "generations to keep, with --pxe-dir")
	store := fs.Bool("store", false, "import the Nix store paths that send --store sends into this host's store (instead of --dest)")
	substitute := fs.Bool("substitute", false, "with --store: first get the paths this host lacks from its own substituters (nix.conf), and want only the rest")
	wait := fs.Duration("accept-timeout", 2*time.Minute, "how long to wait for the pinned sender to connect")
	keepPartial := fs.Bool("keep-partial", false, "on failure, leave what arrived for a retry to reuse (set by the controller)")
	fs.MarkHidden("keep-partial")
	ef := addEndFlags(e, fs, "sender")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError("recv: unexpected argument %q", fs.Arg(0))
	}
	if *substitute && !*store {
		return usageError("recv: --substitute goes with --store")
	}
	var t ends.Target
	switch {
	case *store && (*dest != "" || *publish != ""):
		return usageError("recv: give exactly one of --dest DIR, --pxe-dir DIR or --store")
	case *store:
		t = ends.Store{Substitute: *substitute, KeepPartial: *keepPartial}
	case (*dest == "") == (*publish == ""):
		return usageError("recv: give exactly one of --dest DIR or --pxe-dir DIR")
	case *dest != "":
		t = ends.Dir{Path: *dest, Replace: *replace}
	default:
		t = ends.Slot{PXEDir: *publish, Instance: *instance, System: *system, Keep: *keep, KeepPartial: *keepPartial}
	}
	s, err := ends.Receive(ctx, ends.ReceiveOptions{Channel: ef.channel("recv"), Listen: *listen, AcceptTimeout: *wait, Target: t})
	if err != nil {
		return err
	}
	verb := "received"
	if *store {
		verb = "imported"
	}
	printSummary(ef.out(), ef.json, verb, *s, *store)
	return nil
}
