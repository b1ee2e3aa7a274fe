package main

import (
	"context"

	"github.com/nbship/nbship/remote"
)

func init() {
	register(command{name: "agent", plumbing: true, summary: "run the controller's commands on this host through one session (started by the controller)", run: cmdAgent})
}

// cmdAgent is the host's end of the one session per host (see
// remote.ServeAgent): it takes no flags; its stdin is the controller's
// lifeline.
func cmdAgent(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "agent", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("agent takes no arguments")
	}
	return remote.ServeAgent(ctx, e.stdin, e.stdout, e.stderr)
}
