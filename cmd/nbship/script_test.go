package main

import (
	"strconv"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScripts runs the CLI scripts in testdata/script: help texts, usage
// errors, exit statuses and JSON shapes, as a user sees them. Each script
// runs in a directory of its own with HOME there, and nothing in them
// reaches a host.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(env *testscript.Env) error {
			env.Setenv("HOME", env.WorkDir)
			env.Setenv("PACKET_AUTH_TOKEN", "")
			env.Setenv("HCLOUD_TOKEN", "")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"status": cmdStatus,
		},
	})
}

// cmdStatus runs the rest of the line as an nbship command and checks its
// exit status: "status 2 nbship bogus" (testscript's own exec tells only
// zero from non-zero).
func cmdStatus(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: status CODE nbship ARGS...")
	}
	err := ts.Exec(args[1], args[2:]...)
	got := 0
	if err != nil {
		got = -1
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			got = ee.ExitCode()
		}
	}
	if want := args[0]; want != strconv.Itoa(got) {
		ts.Fatalf("%s exited with %d, want %s (%v)", args[1], got, want, err)
	}
}
