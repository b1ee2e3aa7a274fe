#!/usr/bin/env bash
# bench/sessions.sh — the fixed cost of an unchanged re-publish
# (`nbship aarch64 --drv`) with instant and with slow (0.5 s) login shells
# on both hosts, with each step in a session of its own (NBSHIP_NO_AGENT=1,
# how nbship worked before the agent) and through one session per host.
#
#   sudo bash bench/sessions.sh            # 1 warm-up + 7 runs of each
#   BENCH_RUNS=15 sudo bash bench/sessions.sh
#
# Not part of `make bench`; prints a Markdown table for BENCHMARKS.md and
# leaves hyperfine's exports in bench/results/sessions/. Like make bench it
# takes the rig's lock, brings the rig up and tears it down at the end.
# Both hosts run the amd64 nbship (--remote-nbship), as make bench's
# fixed-cost rows do, so nbship is found without a command on the host.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export BENCH_TOP=$top
# shellcheck source=bench/lib.sh
. bench/lib.sh
runs=${BENCH_RUNS:-7}
slow=${BENCH_SLOW:-0.5}
out=$top/bench/results/sessions

[ "$(id -u)" = 0 ] || die "must run as root (the rig)"
command -v hyperfine >/dev/null || die "hyperfine not found (scripts/deps.sh installs it)"
command -v jq >/dev/null || die "jq not found (scripts/deps.sh installs it)"

rig_lock

netboot_shell=$(getent passwd netboot | cut -d: -f7 || true)
cleanup() {
	if [ -n "${RIG_DIR:-}" ]; then
		rm -f "$RIG_DIR/build/root/.bashrc" "$RIG_DIR/pxe/home/.bashrc"
	fi
	if [ -n "$netboot_shell" ]; then usermod --shell "$netboot_shell" netboot || true; fi
	rig down || true
}
trap cleanup EXIT

note "bringing up the rig"
rig up
eval "$(rig env)"
export RIG_DIR RIG_OP_HOME RIG_CONFIG
[ -n "$netboot_shell" ] || netboot_shell=$(getent passwd netboot | cut -d: -f7)
[ "$(getent passwd root | cut -d: -f7)" = /bin/bash ] || die "root's login shell is not /bin/bash: the slow shell is a ~/.bashrc"
usermod --shell /bin/bash netboot

work=$RIG_DIR/bench-sessions
mkdir -p "$work" "$out"
chmod 0755 "$work"
note "building nbship"
CGO_ENABLED=0 go build -trimpath -o "$work/nbship" ./cmd/nbship
chmod 0755 "$work/nbship"

cat >"$work/c2.large.arm.nix" <<EOF
import $top/testdata/instances/c2.large.arm.nix { salt = "bench-sessions"; }
EOF
{ cat "$RIG_CONFIG"; echo "nixFile $work/c2.large.arm.nix"; echo "instance c2.large.arm"; } >"$work/builders.conf"

# shell_rc DELAY: every login shell sshd starts on the two hosts sleeps DELAY
# (nothing for 0).
shell_rc() {
	local f
	for f in "$RIG_DIR/build/root/.bashrc" "$RIG_DIR/pxe/home/.bashrc"; do
		if [ "$1" = 0 ]; then
			rm -f "$f"
		else
			printf '[ -n "$SSH_CONNECTION" ] && sleep %s\n' "$1" >"$f"
			chmod 0644 "$f"
		fi
	done
}

shell_rc 0
note "publishing the image once"
first=$(cd "$work" && on op "$work/nbship" aarch64 --config "$work/builders.conf" --remote-nbship "$work/nbship" --json)
drv=$(jq -r .drv <<<"$first")

declare -A median
for shell in 0 "$slow"; do
	shell_rc "$shell"
	for mode in each agent; do
		noagent=0
		[ "$mode" = each ] && noagent=1
		name="shell-$shell.$mode"
		note "$name"
		(cd "$work" && hyperfine --warmup 1 --runs "$runs" --export-json "$out/$name.json" \
			"nsenter -t $(anchor op) -n -m --wd=. -- env HOME=$RIG_OP_HOME NBSHIP_NO_AGENT=$noagent $work/nbship aarch64 --config $work/builders.conf --drv $drv --remote-nbship $work/nbship")
		median[$name]=$(jq -r '.results[0].median' "$out/$name.json")
	done
done
shell_rc 0

{
	echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC'), nbship $(git rev-parse --short HEAD), $(nproc) cores, load at the end $(loadavg); 1 warm-up + $runs runs each, medians."
	echo
	echo "| login shell on both hosts | a session per step (before) | one session per host (after) |"
	echo "|---|---|---|"
	printf '| instant | %.2f s | %.2f s |\n' "${median[shell-0.each]}" "${median[shell-0.agent]}"
	printf '| sleeps %s s | %.2f s | %.2f s |\n' "$slow" "${median[shell-$slow.each]}" "${median[shell-$slow.agent]}"
} | tee "$out/table.md"
