#!/usr/bin/env bash
# The demo command (README): installs what it needs, builds nbship, and moves
# Debian's arm64 netboot files (kernel Image, initrd) plus a netboot.ipxe
# from a relay to a receiver on loopback over the pinned channel, handing
# each end the other's fingerprint on stdin as the controller does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"
make -s dist/nbship-linux-amd64
bin=$PWD/dist/nbship-linux-amd64

work=$(mktemp -d /tmp/nbship-demo.XXXXXX)
cleanup() {
	kill "${rpid:-}" "${spid:-}" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

d=/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64
mkdir "$work/src"
ln -s "$d/linux" "$work/src/Image"
ln -s "$d/initrd.gz" "$work/src/initrd"
printf '#!ipxe\nkernel Image initrd=initrd console=ttyAMA0 ${cmdline}\ninitrd initrd\nboot\n' >"$work/src/netboot.ipxe"

mkdir -p "$work/pxe"
mkfifo "$work/r.in" "$work/r.out" "$work/s.in" "$work/s.out"
"$bin" recv --listen 127.0.0.1:0 --dest "$work/pxe/hydra-c2.large.arm" --peer-pin - --json \
	<"$work/r.in" >"$work/r.out" &
rpid=$!
exec 3>"$work/r.in" 4<"$work/r.out"
read -r rfp <&4
read -r _ addr <&4
"$bin" relay --connect "$addr" --peer-pin - --json "$work/src" <"$work/s.in" >"$work/s.out" &
spid=$!
exec 5>"$work/s.in" 6<"$work/s.out"
read -r sfp <&6
echo "receiver: $rfp, listening on $addr" >&2
echo "relay:    $sfp" >&2
echo "$sfp" >&3
echo "$rfp" >&5
summary=$(cat <&6)
wait "$spid"
wait "$rpid"
echo "relay summary: $summary" >&2
for f in Image initrd netboot.ipxe; do
	cmp -s "$work/src/$f" "$work/pxe/hydra-c2.large.arm/$f" || { echo "demo: $f differs" >&2; exit 1; }
done
ls -l "$work/pxe/hydra-c2.large.arm" >&2
echo "demo: Image, initrd and netboot.ipxe arrived byte-identical" >&2
