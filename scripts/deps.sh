#!/bin/bash
# deps.sh — install what nbship's tests, benchmarks and demo need on a fresh
# Debian 12 machine, and make linux/arm64 binaries runnable through qemu-user.
#
# Run as root. Idempotent: `apt-get update` runs only when something is
# missing, and each step is skipped when already done. Quiet on success
# except one line per thing it installed or enabled.
set -euo pipefail

PACKAGES=(
	nix-bin openssh-server openssh-client nginx
	qemu-user-static binfmt-support
	debian-installer-12-netboot-arm64 debian-installer-12-netboot-amd64
	netcat-openbsd zstd iproute2 time psmisc procps util-linux make curl
	ca-certificates qemu-system-x86 ipxe-qemu hyperfine
	busybox-static dropbear-bin kexec-tools cpio
)
GO=${GO:-/usr/local/go/bin/go}

die() { echo "deps.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and mounts binfmt_misc)"

# --- packages -------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log=$(mktemp)
	if ! apt-get update >"$log" 2>&1 ||
		! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			"${missing[@]}" >>"$log" 2>&1; then
		cat "$log" >&2
		rm -f "$log"
		die "apt-get failed installing: ${missing[*]}"
	fi
	rm -f "$log"
	for p in "${missing[@]}"; do echo "installed $p"; done
fi

# --- binfmt_misc + qemu-aarch64 --------------------------------------------
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
		die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc"
	echo "mounted binfmt_misc"
fi
if [ "$(head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null)" != enabled ]; then
	update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
		update-binfmts --import qemu-aarch64 >/dev/null 2>&1 || true
	[ "$(head -n1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null)" = enabled ] ||
		die "update-binfmts could not enable qemu-aarch64"
	echo "enabled binfmt qemu-aarch64"
fi
# The rig runs arm64 programs inside other mount namespaces, where the
# interpreter path may not resolve: the kernel must hold it open (flag F).
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
	die "binfmt qemu-aarch64 lacks the fix_binary (F) flag"

# --- an arm64 static binary must run ---------------------------------------
[ -x "$GO" ] || die "Go not found at $GO (set GO=/path/to/go)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/main.go" <<'GOEOF'
package main

import (
	"os"
	"runtime"
)

func main() { os.Stdout.WriteString(runtime.GOARCH + "\n") }
GOEOF
# Without HOME (some CI shells) Go has no default build cache.
[ -n "${HOME:-}" ] || export GOCACHE="$tmp/gocache"
(cd "$tmp" && GOOS=linux GOARCH=arm64 CGO_ENABLED=0 GOFLAGS='' GO111MODULE=off \
	"$GO" build -o hello-arm64 main.go) || die "cannot build a linux/arm64 test binary"
out=$("$tmp/hello-arm64" 2>&1) || die "a linux/arm64 binary does not run: $out"
[ "$out" = arm64 ] || die "a linux/arm64 binary printed $out, want arm64"
