package main

import (
	"context"
	"fmt"
	"os"

	"github.com/nbship/nbship/transfer"
)

// sweepKeptCommand is what nbship ship runs on the receiving host after its
// last attempt failed: the NARs earlier attempts kept for a retry go.
const sweepKeptCommand = "sweep-kept-nars"

func init() {
	register(command{name: sweepKeptCommand, summary: "remove the NARs recv --store kept for a retry that will not come (started by nbship ship)", run: cmdSweepKept, hidden: true})
}

func cmdSweepKept(_ context.Context, e *env, args []string) error {
	if len(args) != 0 {
		return usageError("%s: no arguments", sweepKeptCommand)
	}
	for _, p := range transfer.SweepKeptNARs(os.TempDir()) {
		fmt.Fprintf(e.stderr, "nbship: removed %s, kept for a retry that did not come\n", p)
	}
	return nil
}
