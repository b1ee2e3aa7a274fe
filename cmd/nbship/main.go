// Command nbship builds, ships and publishes Nix netboot images.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/nbship/nbship/internal/protocol"
	"github.com/nbship/nbship/internal/version"
)

// command is one subcommand. Each lives in its own cmd_*.go file and
// registers itself in init, so files can be added without touching this one.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, env *env, args []string) error
	// plumbing commands (the ends the controller starts on the hosts)
	// are not listed with the user's commands.
	plumbing bool
	// hidden commands (what the controller alone starts on a host, such
	// as kexec-end) are not listed at all.
	hidden bool
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

// Errors that ask for an exit status or a hint line are protocol.Errors,
// the ends' as well as the commands'.

// withHint gives err a second line telling the user what to do.
func withHint(err error, format string, a ...any) error {
	h := fmt.Sprintf(format, a...)
	if pe, ok := err.(*protocol.Error); ok && pe.Hint == "" {
		return &protocol.Error{Code: pe.Code, Err: pe.Err, Hint: h}
	}
	return &protocol.Error{Err: err, Hint: h}
}

// withCode gives err the exit status code.
func withCode(code int, err error) error {
	return &protocol.Error{Code: code, Err: err}
}

func usageError(format string, a ...any) error {
	return withCode(protocol.ExitUsage, fmt.Errorf(format, a...))
}

func main() { os.Exit(mainCode()) }

// mainCode runs nbship with the process's arguments and streams, and
// returns its exit status.
func mainCode() int {
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
	return code
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
	code, hint := protocol.Explain(err)
	if hint != "" {
		fmt.Fprintf(w, "nbship: hint: %s\n", hint)
	}
	if code != 0 {
		return code
	}
	if errors.Is(err, context.Canceled) {
		return 130
	}
	if code := protocol.ExitCode(err); code != 0 {
		// An end refused what it was sent, or a pin did not match.
		return code
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

// subcommand is one subcommand of a group (image, spot, device, builders).
type subcommand struct {
	name, summary string
	run           func(ctx context.Context, e *env, args []string) error
}

// registerGroup registers a command made of subcommands (nbship image
// list, …); footer, if any, goes in the group's usage before the pointer
// to the flags.
func registerGroup(name, summary, footer string, subs ...subcommand) {
	register(command{name: name, summary: summary, run: func(ctx context.Context, e *env, args []string) error {
		return dispatch(ctx, e, name, subs, args, footer)
	}})
}

// dispatch runs the subcommand of group that args name; footer, if any,
// goes in the group's usage before the pointer to the flags.
func dispatch(ctx context.Context, e *env, group string, subs []subcommand, args []string, footer string) error {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "usage: nbship %s SUBCOMMAND [flags] [args]\n\nsubcommands:\n", group)
		for _, s := range subs {
			fmt.Fprintf(w, "  %-9s %s\n", s.name, s.summary)
		}
		fmt.Fprintf(w, "\n%srun 'nbship %s SUBCOMMAND --help' for its flags\n", footer, group)
	}
	if len(args) == 0 {
		usage(e.stderr)
		return usageError("%s: no subcommand given", group)
	}
	switch args[0] {
	case "help", "-h", "--help":
		usage(e.stdout)
		return nil
	}
	for _, s := range subs {
		if s.name == args[0] {
			return s.run(ctx, e, args[1:])
		}
	}
	return withHint(usageError("%s: unknown subcommand %q", group, args[0]), "run 'nbship %s help' for the list", group)
}

// printJSON writes v as one line of JSON: every --json output is one.
func printJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func usage(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "usage: nbship [--version] COMMAND [flags] [args]\n\ncommands:\n")
	var names, plumbing []string
	for n, c := range commands {
		switch {
		case c.hidden:
		case c.plumbing:
			plumbing = append(plumbing, n)
		default:
			names = append(names, n)
		}
	}
	sort.Strings(names)
	sort.Strings(plumbing)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintf(w, "\nrun 'nbship COMMAND --help' for a command's flags\n")
	if len(plumbing) > 0 {
		fmt.Fprintf(w, "(%s: nbship starts these on the hosts itself: its agent, and the two ends of the channel)\n", strings.Join(plumbing, ", "))
	}
}

// newFlagSet makes a subcommand's flag set with the shared conventions.
func newFlagSet(e *env, name, synopsis string) *pflag.FlagSet {
	fs := pflag.NewFlagSet("nbship "+name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: nbship %s %s\n\nflags:\n", name, synopsis)
		printFlags(e.stderr, fs)
	}
	return fs
}

// metavars name the value of a flag whose usage names none (in
// backquotes), by its type: every command's help has one style.
var metavars = map[string]string{"string": "VALUE", "stringArray": "VALUE", "int": "N", "int64": "N", "uint": "N", "float64": "N", "duration": "DURATION"}

// printFlags lists fs's flags, one a line: names, the value's metavar in
// capitals, the usage and the default (where it is not the zero value).
func printFlags(w io.Writer, fs *pflag.FlagSet) {
	type row struct{ left, usage string }
	var rows []row
	width := 0
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		left := "      --" + f.Name
		if f.Shorthand != "" {
			left = "  -" + f.Shorthand + ", --" + f.Name
		}
		metavar, usage := pflag.UnquoteUsage(f)
		if t := f.Value.Type(); t != "bool" {
			if m, ok := metavars[metavar]; ok {
				metavar = m
			}
			left += " " + metavar
		}
		switch f.DefValue {
		case "", "0", "0s", "false", "[]":
		default:
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		rows = append(rows, row{left, usage})
		width = max(width, len(left))
	})
	for _, r := range rows {
		fmt.Fprintf(w, "%-*s   %s\n", width, r.left, r.usage)
	}
}

// parseFlags parses and turns pflag errors into usage errors (exit 2).
func parseFlags(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError("%s: %v", strings.TrimPrefix(fs.Name(), "nbship "), err)
	}
	return nil
}

// parseArgs is parseFlags for a subcommand that takes n arguments; names
// says which ("the device ID"), for the error.
func parseArgs(fs *pflag.FlagSet, args []string, n int, names string) ([]string, error) {
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() != n {
		return nil, usageError("%s: want %s, got %d arguments", fs.Name(), names, fs.NArg())
	}
	return fs.Args(), nil
}
