#!/usr/bin/env bash
# The demo command (README): on a fresh Debian machine as root, installs what
# it needs, brings up the three-host rig (operator, aarch64 build host, PXE
# host with nginx — network namespaces with their own sshd and Nix stores),
# runs `nbship aarch64 --config builders.conf` from the operator, fetches
# the published netboot.ipxe, Image and initrd from nginx as a booting
# machine would, checks them against the build output, and tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
bash scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"
make -s build
rig() { bash "$top/rig/rig.sh" "$@"; }
# Hold the rig's lock for the whole demo, so a test run elsewhere on this
# machine neither tears it down under us nor is torn down by us.
mkdir -p /run/lock
exec 9>>/run/lock/nbship-rig.lock
flock 9
export NBSHIP_RIG_LOCKED=1

trap 'rig down' EXIT
echo "demo: bringing up the rig (operator, builder, pxe)" >&2
rig up
eval "$(rig env)"

echo "demo: builders.conf on the operator:" >&2
sed 's/^/    /' "$RIG_CONFIG" >&2
echo "demo: nbship aarch64 --config $RIG_CONFIG" >&2
summary=$(cd "$top/testdata" && rig exec op -- "$top/dist/nbship-linux-amd64" aarch64 --config "$RIG_CONFIG" --json)
echo "demo: summary: $summary" >&2
out=$(printf '%s' "$summary" | sed -n 's/.*"out":"\([^"]*\)".*/\1/p')

fetched=$(mktemp -d)
trap 'rm -rf "$fetched"; rig down' EXIT
for f in netboot.ipxe Image initrd; do
	url="${RIG_HTTP_URL}hydra-c2.large.arm/$f"
	rig exec op -- curl -sSf -o "$fetched/$f" "$url"
	served=$(sha256sum <"$fetched/$f" | cut -d' ' -f1)
	built=$(rig exec build -- sha256sum "$out/$f" | cut -d' ' -f1)
	[ "$served" = "$built" ] || { echo "demo: $url differs from the build output" >&2; exit 1; }
	printf 'demo: GET %-50s %10d bytes  sha256 %s  = build output\n' "$url" "$(stat -c %s "$fetched/$f")" "${served:0:16}" >&2
done
echo "demo: served netboot.ipxe:" >&2
sed 's/^/    /' "$fetched/netboot.ipxe" >&2
echo "demo: done; tearing the rig down" >&2
