# shellcheck shell=bash disable=SC2034
# lib.sh — shared by bench/run.sh, bench/sessions.sh and bench/contender.sh
# (sourced, not run).
#
# Everything the bench touches on the rig lives under $BENCH_WORK
# ($RIG_DIR/bench, removed by `rig.sh down`); what is kept goes to
# $BENCH_RAW (bench/results/).

BENCH_TOP=${BENCH_TOP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

# Addresses and ports on the rig (rig/rig.sh).
PXE_DIRECT=10.77.3.2
PORT_NBSHIP=61630 # bare nbship send/recv
PORT_SEED=61631   # tar | openssl | nc
PORT_ZSTD=61632   # tar | zstd | nc

note() { echo "bench: $*" >&2; }
die() {
	echo "bench: $*" >&2
	exit 1
}

rig() { bash "$BENCH_TOP/rig/rig.sh" "$@"; }

# rig_lock takes the rig's lock (fd 9) for the rest of the script, and tells
# rig.sh that its caller holds it.
rig_lock() {
	mkdir -p /run/lock
	exec 9>>/run/lock/nbship-rig.lock
	if ! flock -n 9; then
		note "waiting for the rig lock (someone is using the rig)"
		flock 9
	fi
	export NBSHIP_RIG_LOCKED=1
}

# on HOST CMD... runs CMD in HOST's namespaces as root (no SSH), in the
# current directory, like `rig.sh exec` (on op with HOME=RIG_OP_HOME) but
# without a shell in between, so every contender pays the same few ms.
on() {
	local h=$1 pid
	shift
	read -r pid <"$RIG_DIR/$h/anchor.pid"
	[ "$h" = op ] && set -- env HOME="$RIG_OP_HOME" "$@"
	nsenter -t "$pid" -n -m --wd=. -- "$@"
}

anchor() { cat "$RIG_DIR/$1/anchor.pid"; }

# wire prints the byte counters (rx+tx, one end of each veth pair, so both
# directions) of the rig's three links: op-build op-pxe build-pxe.
wire() {
	awk '/^ *(op-build|op-pxe):/ { sub(":", " "); printf "%s %.0f\n", $1, $2 + $10 }' "/proc/$(anchor op)/net/dev"
	awk '/^ *build-pxe:/ { sub(":", " "); printf "%s %.0f\n", $1, $2 + $10 }' "/proc/$(anchor build)/net/dev"
}

# wait_listen HOST PORT: poll (10 ms) until something listens on PORT there.
wait_listen() {
	local hex i
	hex=$(printf '%04X' "$2")
	for ((i = 0; i < 1000; i++)); do
		grep -q ":$hex 00000000:0000 0A" "/proc/$(anchor "$1")/net/tcp" && return 0
		sleep 0.01
	done
	die "nothing listens on $1:$2 after 10 s"
}

# shape_all RATE|off: the same tbf on both ends of all three links, so a
# contender that goes through the operator has no faster path than the
# direct one (rig.sh shape does build-pxe; the operator's links likewise).
shape_all() {
	local rate=$1 bps burst l
	rig shape "$rate"
	for l in "op op-build" "build build-op" "op op-pxe" "pxe pxe-op"; do
		# shellcheck disable=SC2086
		set -- $l
		if [ "$rate" = off ]; then
			ip netns exec "nbs-$1" tc qdisc del dev "$2" root 2>/dev/null || true
		else
			bps=$(rate_bytes "$rate")
			burst=$((bps / 100))
			[ "$burst" -ge 65536 ] || burst=65536
			ip netns exec "nbs-$1" tc qdisc replace dev "$2" root tbf rate "$rate" burst "$burst" latency 50ms
		fi
	done
}

# rate_bytes 100mbit|1gbit → bytes per second (as rig.sh computes it).
rate_bytes() {
	case $1 in
	*gbit) echo $((${1%gbit} * 125000000)) ;;
	*mbit) echo $((${1%mbit} * 125000)) ;;
	*) die "rate_bytes: unsupported rate $1" ;;
	esac
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# prewarm FILES...: read every byte once, so each run starts with its source
# in the page cache (the bench pre-warms rather than drops caches).
prewarm() {
	find -L "$@" -type f -print0 | xargs -0 -r cat >/dev/null
}

# settle waits (at most 5 s) until the disk under the rig has been idle for
# 0.3 s: deleting the previous run's 15k files costs the file system work
# (journal, discards on this machine's ext4) that must not spill into the
# next timed run.
settle() {
	local dev prev='' cur quiet=0 i st
	dev=$(findmnt -n -o SOURCE --target "$RIG_DIR" 2>/dev/null) || return 0
	dev=${dev#/dev/}
	[ -r "/sys/class/block/$dev/stat" ] || return 0
	for ((i = 0; i < 50; i++)); do
		read -r -a st <"/sys/class/block/$dev/stat"
		cur=${st[9]} # io_ticks: ms the device was busy
		if [ "$cur" = "$prev" ]; then
			quiet=$((quiet + 1))
			[ "$quiet" -ge 3 ] && return 0
		else
			quiet=0
		fi
		prev=$cur
		sleep 0.1
	done
}
