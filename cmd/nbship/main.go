// Command nbship builds, ships and publishes Nix netboot images.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/internal/version"
)

// command is one subcommand. Each lives in its own cmd_*.go file and
// registers itself in init, so files can be added without touching this one.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *env, args []string) error
	hidden  bool // an end the controller starts on a host: not in the usage
}

var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("nbship: command registered twice: " + c.name)
	}
	commands[c.name] = c
}

// env is what a subcommand may touch of the process: its streams and
// environment. Tests call run with their own.
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

// hintError is an error with a second line telling the user what to do.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

func withHint(err error, format string, a ...any) error {
	return &hintError{err: err, hint: fmt.Sprintf(format, a...)}
}

// exitError carries a specific exit status (2 for usage errors).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageError(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	err := run(ctx, e, os.Args[1:])
	interrupted := ctx.Err() != nil
	stop()
	code := report(e.stderr, err)
	if interrupted && code != 0 {
		// Whatever the error says (a remote end stopped, a session
		// closed), the cause was the signal.
		code = 130
	}
	os.Exit(code)
}

// report prints err as one line (plus an optional hint) and returns the exit code.
func report(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(w, "nbship: %v\n", err)
	var h *hintError
	if errors.As(err, &h) && h.hint != "" {
		fmt.Fprintf(w, "nbship: hint: %s\n", h.hint)
	}
	var x *exitError
	if errors.As(err, &x) {
		return x.code
	}
	if errors.Is(err, context.Canceled) {
		return 130
	}
	return 1
}

func run(ctx context.Context, e *env, args []string) error {
	fs := pflag.NewFlagSet("nbship", pflag.ContinueOnError)
	fs.SetInterspersed(false)
	fs.SetOutput(e.stderr)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() { usage(e.stderr, fs) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	if *showVersion {
		fmt.Fprintln(e.stdout, "nbship", version.Version)
		return nil
	}
	rest := fs.Args()
	if len(rest) == 0 {
		usage(e.stderr, fs)
		return usageError("no command given")
	}
	if rest[0] == "help" {
		usage(e.stdout, fs)
		return nil
	}
	c, ok := commands[rest[0]]
	if !ok {
		return withHint(usageError("unknown command %q", rest[0]), "run 'nbship help' for the list of commands")
	}
	return c.run(ctx, e, rest[1:])
}

func usage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "usage: nbship [--version] COMMAND [flags] [args]\n\ncommands:\n")
	names := make([]string, 0, len(commands))
	for n, c := range commands {
		if !c.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nrun 'nbship COMMAND --help' for a command's flags\n")
}

// newFlagSet makes a subcommand's flag set with the shared conventions.
func newFlagSet(e *env, name, synopsis string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("nbship "+name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: nbship %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses and turns pflag errors into usage errors (exit 2).
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError("%s: %v", fs.Name(), err)
	}
	return nil
}
