package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
)

// Arch returns the host's architecture as a GOARCH ("amd64" or "arm64"),
// from uname -m.
func (c *Client) Arch(ctx context.Context) (string, error) {
	out, err := c.Output(ctx, "uname", "-m")
	if err != nil {
		return "", err
	}
	arch, err := archOf(strings.TrimSpace(string(out)))
	if err != nil {
		return "", fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	return arch, nil
}

// archOf maps uname -m to a GOARCH.
func archOf(m string) (string, error) {
	switch m {
	case "x86_64", "amd64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	}
	return "", fmt.Errorf("unsupported machine %q (uname -m): nbship runs on x86_64 and aarch64", m)
}

// InstallOptions says which nbship a host should run.
type InstallOptions struct {
	Version  string                              // this binary's version (internal/version.Version)
	Override string                              // --remote-nbship PATH: use this path on the host as is
	Binary   func(goarch string) (string, error) // local path of the nbship binary for that arch

	// Agent: when nbship is uploaded, the upload's session goes on as the
	// host's agent (see Client.UseAgent), so that installing and serving
	// start the login shell once between them.
	Agent bool
}

// InstallNbship makes sure the host has this nbship and returns its path
// there. In order: o.Override as is; an nbship on the host's PATH whose
// --version is exactly o.Version (never for "dev"); the copy cached under
// ~/.cache/nbship/VERSION-HASH16/nbship on the host if its SHA-256 matches
// the local binary's; else the local binary is uploaded over the session's
// stdin to a temp file in that directory, checked, made executable and
// renamed into place (the temp file is removed on any failure).
//
// Finding it takes one command on the host (one start of the login
// shell): it reports the machine, $HOME, the nbship on PATH and the hashes
// of the cached copies for each architecture a local binary exists for.
// Uploading takes one more.
func (c *Client) InstallNbship(ctx context.Context, o InstallOptions) (string, error) {
	if o.Override != "" {
		return o.Override, nil
	}
	checkPath := o.Version != "" && o.Version != "dev"
	if !checkPath && o.Binary == nil {
		return "", fmt.Errorf("ssh: %s: no nbship for the host: InstallOptions.Binary is nil", c.name)
	}
	// The local binaries there are, by architecture, and their cache
	// directories on the host.
	type localBin struct {
		path, sum, dir string
		size           int64
		err            error
	}
	locals := map[string]*localBin{}
	args := []string{"sh", "-c", findScript, "sh", strconv.FormatBool(checkPath)}
	for _, arch := range []string{"amd64", "arm64"} {
		l := &localBin{}
		locals[arch] = l
		if o.Binary == nil {
			l.err = errors.New("InstallOptions.Binary is nil")
			continue
		}
		if l.path, l.err = o.Binary(arch); l.err != nil {
			continue
		}
		if l.sum, l.size, l.err = fileSHA256(l.path); l.err != nil {
			continue
		}
		l.dir = cacheDirName(o.Version, l.sum)
		args = append(args, l.dir)
	}
	out, err := c.Output(ctx, args...)
	if err != nil {
		return "", err
	}
	var machine, home, pathVersion, pathBin string
	cached := map[string]string{} // dir -> sha256
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, " ")
		switch k {
		case "machine":
			machine = v
		case "home":
			home = v
		case "version":
			if pathVersion == "" {
				pathVersion = v
			}
		case "path":
			pathBin = v
		case "cached":
			if d, sum, ok := strings.Cut(v, " "); ok {
				cached[d] = sum
			}
		}
	}
	if checkPath && pathBin != "" && strings.TrimSpace(pathVersion) == "nbship "+o.Version {
		return pathBin, nil
	}
	if o.Binary == nil {
		return "", fmt.Errorf("ssh: %s: no nbship for the host: InstallOptions.Binary is nil", c.name)
	}
	arch, err := archOf(machine)
	if err != nil {
		return "", fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	l := locals[arch]
	if l.err != nil {
		return "", fmt.Errorf("ssh: %s: nbship for %s: %w", c.name, arch, l.err)
	}
	if home == "" || !strings.HasPrefix(home, "/") {
		return "", fmt.Errorf("ssh: %s: the remote $HOME is %q, not an absolute path", c.name, home)
	}
	dir, sum, size := l.dir, l.sum, l.size
	remotePath := path.Join(home, ".cache/nbship", dir, "nbship")
	if cached[dir] == sum {
		return remotePath, nil
	}
	local := l.path

	f, err := os.Open(local)
	if err != nil {
		return "", fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	defer f.Close()
	if o.Agent {
		// The upload is the first size bytes of stdin; the rest of it is
		// the agent's lifeline.
		line := QuoteArgs([]string{"sh", "-c", uploadScript + `
echo nbship-uploaded
exec "$d/nbship" agent`, "sh", dir, sum, strconv.FormatInt(size, 10)})
		uerr, err := c.agentSession(ctx, line, remotePath, io.LimitReader(f, size))
		if uerr != nil {
			return "", fmt.Errorf("ssh: %s: uploading %s: %w", c.name, local, uerr)
		}
		if err != nil {
			return "", err
		}
	} else {
		err = c.Run(ctx, Cmd{
			Args:  []string{"sh", "-c", uploadScript, "sh", dir, sum, strconv.FormatInt(size, 10)},
			Stdin: f,
		})
		if err != nil {
			return "", fmt.Errorf("ssh: %s: uploading %s: %w", c.name, local, err)
		}
	}
	fmt.Fprintf(c.log, "ssh: %s: uploaded nbship (%s, %d bytes) to %s\n", c.name, arch, size, remotePath)
	return remotePath, nil
}

// uploadScript writes the first $3 bytes of stdin to
// ~/.cache/nbship/$1/nbship if their SHA-256 is $2 (through a temp file
// removed on any failure). $d is that directory.
const uploadScript = `umask 077
d="$HOME/.cache/nbship/$1"
mkdir -p "$d" || exit 1
t="$d/.nbship.tmp.$$"
trap 'rm -f "$t"' EXIT
trap 'rm -f "$t"; exit 1' HUP INT TERM PIPE
head -c "$3" > "$t" || exit 1
s=$(sha256sum < "$t") || exit 1
s=${s%% *}
if [ "$s" != "$2" ]; then echo "upload corrupted: sha256 $s, want $2" >&2; exit 1; fi
chmod 0755 "$t" && mv -f "$t" "$d/nbship" || exit 1
trap - EXIT`

// findScript reports, one "key value" line each: the machine (uname -m),
// $HOME, with $1 = true the --version and path of an nbship on PATH, and
// for each cache directory named after it the SHA-256 of its nbship.
const findScript = `printf 'machine %s\n' "$(uname -m)"
printf 'home %s\n' "$HOME"
if [ "$1" = true ] && p=$(command -v nbship) && v=$("$p" --version 2>/dev/null); then
	printf 'version %s\n' "$v"
	printf 'path %s\n' "$p"
fi
shift
for d in "$@"; do
	f="$HOME/.cache/nbship/$d/nbship"
	if [ -f "$f" ] && [ -x "$f" ] && s=$(sha256sum < "$f"); then
		printf 'cached %s %s\n' "$d" "${s%% *}"
	fi
done
exit 0`

// cacheDirName is VERSION-<first 16 hex digits of the SHA-256>, with the
// version reduced to characters that are safe in a file name.
func cacheDirName(version, sum string) string {
	v := []byte(version)
	for i, b := range v {
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '+', b == '-':
		default:
			v[i] = '_'
		}
	}
	if len(v) == 0 || v[0] == '.' {
		v = append([]byte("v"), v...)
	}
	return string(v) + "-" + sum[:16]
}

func fileSHA256(name string) (sum string, size int64, err error) {
	f, err := os.Open(name)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	size, err = io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}
