package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// Arch returns the host's architecture as a GOARCH ("amd64" or "arm64"),
// from uname -m.
func (c *Client) Arch(ctx context.Context) (string, error) {
	out, err := c.Output(ctx, "uname", "-m")
	if err != nil {
		return "", err
	}
	m := strings.TrimSpace(string(out))
	switch m {
	case "x86_64", "amd64":
		return "amd64", nil
	case "aarch64", "arm64":
		return "arm64", nil
	}
	return "", fmt.Errorf("ssh: %s: unsupported machine %q (uname -m): nbship runs on x86_64 and aarch64", c.name, m)
}

// InstallOptions says which nbship a host should run.
type InstallOptions struct {
	Version  string                              // this binary's version (internal/version.Version)
	Override string                              // --remote-nbship PATH: use this path on the host as is
	Binary   func(goarch string) (string, error) // local path of the nbship binary for that arch
}

// InstallNbship makes sure the host has this nbship and returns its path
// there. In order: o.Override as is; an nbship on the host's PATH whose
// --version is exactly o.Version (never for "dev"); the copy cached under
// ~/.cache/nbship/VERSION-HASH16/nbship on the host if its SHA-256 matches
// the local binary's; else the local binary is uploaded over the session's
// stdin to a temp file in that directory, checked, made executable and
// renamed into place (the temp file is removed on any failure).
func (c *Client) InstallNbship(ctx context.Context, o InstallOptions) (string, error) {
	if o.Override != "" {
		return o.Override, nil
	}
	if o.Version != "" && o.Version != "dev" {
		out, err := c.Output(ctx, "sh", "-c", `p=$(command -v nbship) || exit 0; v=$("$p" --version 2>/dev/null) || exit 0; printf '%s\n%s\n' "$v" "$p"`)
		if err != nil {
			return "", err
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 && strings.TrimSpace(lines[0]) == "nbship "+o.Version {
			return lines[1], nil
		}
	}
	if o.Binary == nil {
		return "", fmt.Errorf("ssh: %s: no nbship for the host: InstallOptions.Binary is nil", c.name)
	}
	arch, err := c.Arch(ctx)
	if err != nil {
		return "", err
	}
	local, err := o.Binary(arch)
	if err != nil {
		return "", fmt.Errorf("ssh: %s: nbship for %s: %w", c.name, arch, err)
	}
	sum, size, err := fileSHA256(local)
	if err != nil {
		return "", fmt.Errorf("ssh: %s: nbship for %s: %w", c.name, arch, err)
	}
	dir := cacheDirName(o.Version, sum)

	// One round trip: the remote home, and the hash of a cached copy.
	out, err := c.Output(ctx, "sh", "-c", `printf '%s\n' "$HOME"
f="$HOME/.cache/nbship/$1/nbship"
if [ -f "$f" ] && [ -x "$f" ]; then sha256sum < "$f"; fi`, "sh", dir)
	if err != nil {
		return "", err
	}
	home, cached, _ := strings.Cut(string(out), "\n")
	if home == "" || !strings.HasPrefix(home, "/") {
		return "", fmt.Errorf("ssh: %s: the remote $HOME is %q, not an absolute path", c.name, home)
	}
	remotePath := path.Join(home, ".cache/nbship", dir, "nbship")
	if f := strings.Fields(cached); len(f) > 0 && f[0] == sum {
		return remotePath, nil
	}

	f, err := os.Open(local)
	if err != nil {
		return "", fmt.Errorf("ssh: %s: %w", c.name, err)
	}
	defer f.Close()
	err = c.Run(ctx, Cmd{
		Args: []string{"sh", "-c", `umask 077
d="$HOME/.cache/nbship/$1"
mkdir -p "$d" || exit 1
t="$d/.nbship.tmp.$$"
trap 'rm -f "$t"' EXIT
trap 'rm -f "$t"; exit 1' HUP INT TERM PIPE
cat > "$t" || exit 1
s=$(sha256sum < "$t") || exit 1
s=${s%% *}
if [ "$s" != "$2" ]; then echo "upload corrupted: sha256 $s, want $2" >&2; exit 1; fi
chmod 0755 "$t" && mv -f "$t" "$d/nbship"`, "sh", dir, sum},
		Stdin: f,
	})
	if err != nil {
		return "", fmt.Errorf("ssh: %s: uploading %s: %w", c.name, local, err)
	}
	fmt.Fprintf(c.log, "ssh: %s: uploaded nbship (%s, %d bytes) to %s\n", c.name, arch, size, remotePath)
	return remotePath, nil
}

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
