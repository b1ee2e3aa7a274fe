package controller

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nbship/nbship/internal/tail"
	"github.com/nbship/nbship/nixstore"
	"github.com/nbship/nbship/remote"
)

// Instantiate runs nix-instantiate FILE --add-root ROOT --indirect locally,
// as the old scripts did, and returns the .drv store path.
func Instantiate(ctx context.Context, file, root string, stderr io.Writer) (string, error) {
	if _, err := os.Stat(file); err != nil {
		return "", fmt.Errorf("nix: %w; run nbship where ./instances lives, or set nixFile in the config", err)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "nix-instantiate", file, "--add-root", root, "--indirect")
	cmd.Stdout = &out
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", errors.New("nix: nix-instantiate is not installed on this machine; install Nix (Debian: apt-get install nix-bin)")
		}
		return "", fmt.Errorf("nix: nix-instantiate %s: %w", file, err)
	}
	p := strings.TrimSpace(out.String())
	if i := strings.LastIndexByte(p, '\n'); i >= 0 {
		p = p[i+1:]
	}
	// With --add-root it prints the root; the store path is its target.
	if !strings.HasPrefix(p, "/nix/store/") {
		t, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Errorf("nix: resolving %s: %w", p, err)
		}
		p = t
	}
	if !strings.HasSuffix(p, ".drv") {
		return "", fmt.Errorf("nix: nix-instantiate %s printed %q, not a .drv", file, p)
	}
	return p, nil
}

// localLines runs a local command and returns its stdout lines.
func localLines(ctx context.Context, name string, args ...string) ([]string, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("nix: %s %s: %v: %s", name, strings.Join(args, " "), err, tail.LastLine(errb.String()))
	}
	return lines(out.String()), nil
}

func lines(s string) []string {
	var ls []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			ls = append(ls, l)
		}
	}
	return ls
}

// Missing returns the paths (in their order) that are not valid in the
// host's store.
func Missing(ctx context.Context, host *remote.Client, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	var out bytes.Buffer
	err := host.Run(ctx, remote.Cmd{
		Args:   []string{"xargs", "-r", "nix-store", "--check-validity", "--print-invalid"},
		Stdin:  strings.NewReader(strings.Join(paths, "\n") + "\n"),
		Stdout: &out,
	})
	if err != nil {
		return nil, noNix(host, err)
	}
	invalid := map[string]bool{}
	for _, l := range lines(out.String()) {
		invalid[l] = true
	}
	var missing []string
	for _, p := range paths {
		if invalid[p] {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// noNix turns "command not found" from a host into a clear error.
func noNix(host *remote.Client, err error) error {
	var ee *remote.ExitError
	if errors.As(err, &ee) && nixstore.NotFound(ee.Status, ee.Stderr) {
		return fmt.Errorf("nix: %w", &nixstore.NotFoundError{Host: host.Name()})
	}
	return err
}

// Requisites returns the closure of path in the local store, in dependency
// order.
func Requisites(ctx context.Context, path string) ([]string, error) {
	return localLines(ctx, "nix-store", "--query", "--requisites", path)
}

// PushClosure copies closure (Requisites of a path) from the local store to
// host's, only the paths the host lacks, in dependency order, through the
// controller's SSH connection (it is the small .drv closure). It returns
// how many paths were sent.
func PushClosure(ctx context.Context, host *remote.Client, closure []string, stderr io.Writer) (int, error) {
	missing, err := Missing(ctx, host, closure)
	if err != nil {
		return 0, err
	}
	if len(missing) == 0 {
		return 0, nil
	}
	export := exec.CommandContext(ctx, "nix-store", append([]string{"--export"}, missing...)...)
	var errb bytes.Buffer
	export.Stderr = &errb
	pipe, err := export.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := export.Start(); err != nil {
		return 0, fmt.Errorf("nix: nix-store --export: %w", err)
	}
	ierr := host.Run(ctx, remote.Cmd{
		Args:   []string{"nix-store", "--import"},
		Stdin:  pipe,
		Stdout: io.Discard,
		Stderr: Prefixed(stderr, host.Name()),
	})
	eerr := export.Wait()
	if ierr != nil {
		return 0, noNix(host, ierr)
	}
	if eerr != nil {
		return 0, fmt.Errorf("nix: nix-store --export: %v: %s", eerr, tail.LastLine(errb.String()))
	}
	return len(missing), nil
}

// Realise runs nix-store --realise on host with the build log streamed to
// stderr (prefixed with the host), keeping the output alive with an
// indirect GC root under ~/.cache/nbship/gcroots, checks that the output
// has files (the netboot files), and returns the output path. All of it is
// one command on the host: each more would cost a round trip.
func Realise(ctx context.Context, host *remote.Client, drv, rootName string, jobs, cores int, files []string, stderr io.Writer) (string, error) {
	log := Prefixed(stderr, host.Name())
	defer log.Close()
	for _, f := range files {
		if f == "" || strings.ContainsAny(f, "/\n") {
			return "", fmt.Errorf("nix: %q is not a file name", f)
		}
	}
	var out bytes.Buffer
	err := host.Run(ctx, remote.Cmd{
		Args: []string{"sh", "-c", realiseScript, "sh", gcroots, strings.Join(files, "/"),
			"--realise", drv, "--add-root", gcroots + "/" + rootName, "--indirect",
			"--keep-going", "-j", strconv.Itoa(jobs), "--cores", strconv.Itoa(cores)},
		Stdout: &out,
		Stderr: log,
	})
	if err != nil {
		return "", noNix(host, err)
	}
	ls := lines(out.String())
	if len(ls) == 0 {
		return "", fmt.Errorf("nix: %s: nix-store --realise %s printed no output path", host.Name(), drv)
	}
	p := ls[0]
	if !strings.HasPrefix(p, "/nix/store/") {
		return "", fmt.Errorf("nix: %s: the build's root %s/%s points at %q, not a store path", host.Name(), gcroots, rootName, p)
	}
	if miss := ls[1:]; len(miss) > 0 {
		return "", fmt.Errorf("nix: %s: the build output %s lacks %s; is this a netboot image derivation?", host.Name(), p, strings.Join(miss, ", "))
	}
	return p, nil
}

// gcroots is where the builds' GC roots go, relative to the home directory.
const gcroots = ".cache/nbship/gcroots"

// realiseScript makes the GC roots' directory $1, runs nix-store with the
// arguments after $2 and prints the output path (with --add-root nix-store
// prints the root: it is resolved), then each of the /-separated names in
// $2 that the output lacks, one a line.
const realiseScript = `mkdir -p "$1" || exit 1
files=$2
shift 2
o=$(nix-store "$@") || exit
o=${o##*"
"}
case $o in
"" | /nix/store/*) ;;
*) o=$(readlink -f "$o") || exit 1 ;;
esac
printf '%s\n' "$o"
[ -n "$o" ] || exit 0
set -f
IFS=/
for f in $files; do [ -e "$o/$f" ] || printf '%s\n' "$f"; done
exit 0`
