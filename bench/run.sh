#!/usr/bin/env bash
# run.sh — `make bench`: nbship against what it replaces, on the same data,
# the same links and the same machine, in one run. See BENCHMARKS.md.
#
# Brings up the three-host rig (holding its lock throughout), puts the data
# in the builder's store, then for each link (unshaped veth, tbf 1gbit,
# tbf 100mbit) times every contender moving each data set builder → pxe with
# hyperfine (1 warm-up + 5 runs; BENCH_QUICK=1: 1 + 3), counting the bytes on
# all three links and each nbship end's peak RSS. Then: re-shipping data
# already there, the 2 GiB closure for peak RSS, and BENCHMARKS.md's tables
# regenerated from bench/results/ (where the raw output stays).
#
# Environment: BENCH_TMPFS=0 (the rig on the root file system, not a tmpfs),
# BENCH_QUICK=1 (smoke run: 1 warm-up + 3 runs), BENCH_FULL=1
# (every contender on every link), BENCH_LINKS="unshaped 100mbit" (a subset),
# BENCH_ONLY=REGEX (only scenarios matching it), BENCH_BIG=0 (skip the 2 GiB
# closure and the resume row), BENCH_GO=1 (also run bench/gobench.sh), BENCH_RESULTS=DIR (write
# the raw results and a copy of BENCHMARKS.md there instead).
set -euo pipefail
[ -z "${BENCH_RESULTS:-}" ] || BENCH_RESULTS=$(realpath -m "$BENCH_RESULTS")
cd "$(dirname "$0")/.."
top=$PWD
export BENCH_TOP=$top
bash scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"
make -s build
. bench/lib.sh

quick=${BENCH_QUICK:-0}
warmup=1 runs=5
[ "$quick" = 1 ] && runs=3
runs=${BENCH_RUNS:-$runs}
warmup=${BENCH_WARMUP:-$warmup}
links=${BENCH_LINKS:-unshaped 1gbit 100mbit rtt20 rtt100 rtt100g}
delay_rate=${BENCH_DELAY_RATE:-100mbit}
only=${BENCH_ONLY:-.}

# BENCH_RESULTS=DIR keeps a trial run away from bench/results and BENCHMARKS.md.
export BENCH_RAW=${BENCH_RESULTS:-$top/bench/results}
doc=BENCHMARKS.md
[ -n "${BENCH_RESULTS:-}" ] && doc=$BENCH_RAW/BENCHMARKS.md

# The rig's lock for the whole run: tests elsewhere on this machine wait, and
# neither tear the rig down under us nor are torn down by us.
rig_lock

# The previous results stay until this run has the rig; then everything but
# the Go benchmarks' output (bench/gobench.sh writes that) is replaced.
rm -rf "$BENCH_RAW/runs" "$BENCH_RAW/hyperfine" "$BENCH_RAW/failed"
rm -f "$BENCH_RAW"/{meta,commands,scenarios}.txt "$BENCH_RAW/bench.log" "$BENCH_RAW/netdelay.log"
mkdir -p "$BENCH_RAW/runs" "$BENCH_RAW/hyperfine"
exec > >(tee -a "$BENCH_RAW/bench.log") 2>&1
trap '' PIPE # if tee goes, the run goes on (and says so in scenarios.txt)

# The rig's state (the three hosts' Nix stores, pxe's directories) lives in
# a tmpfs of its own: this machine's root file system is ext4 without a
# journal, which for minutes after a delete makes every file creation scan
# past the deleted inodes, and every run here deletes the last run's 15k
# files first (BENCHMARKS.md, "The rig's disk"). BENCH_TMPFS=0 keeps the rig
# on the root file system.
bench_fs=/var/lib/nbship-bench
if [ "${BENCH_TMPFS:-1}" = 1 ]; then
	mkdir -p "$bench_fs"
	mountpoint -q "$bench_fs" || mount -t tmpfs -o size=16g,mode=0755 nbship-bench "$bench_fs"
	export NBSHIP_RIG_DIR=$bench_fs/rig
fi

cleanup() {
	rig undelay >/dev/null 2>&1 || true
	shape_all off >/dev/null 2>&1 || true
	rig down || true
	if [ "${BENCH_TMPFS:-1}" = 1 ]; then umount "$bench_fs" 2>/dev/null || true; fi
}
trap cleanup EXIT
started=$(date +%s)

note "bringing up the rig"
rig up
eval "$(rig env)"
export RIG_DIR RIG_OP_HOME RIG_CONFIG RIG_PXE_DIR RIG_SSH_OPTS
export BENCH_WORK=$RIG_DIR/bench BENCH_DST=$RIG_PXE_DIR/bench-dst
mkdir -p "$BENCH_WORK/bin" "$BENCH_WORK/rss/other" "$BENCH_DST"
chmod 0755 "$BENCH_WORK" "$BENCH_WORK/bin"
chmod 1777 "$BENCH_WORK/rss" "$BENCH_WORK/rss/other"
chown netboot: "$BENCH_DST"
echo "$BENCH_WORK/rss/other" >"$BENCH_WORK/rss/current"
chmod 0644 "$BENCH_WORK/rss/current"

# A native sender: the builder claims aarch64, and nbship would otherwise run
# the arm64 binary there under qemu-user. Both hosts run bench/rss-wrapper.sh
# around the amd64 binary (--remote-nbship), which records each end's peak RSS.
install -m 0755 dist/nbship-linux-amd64 "$BENCH_WORK/bin/nbship"
install -m 0755 bench/rss-wrapper.sh "$BENCH_WORK/nbship"

# ------------------------------------------------------------------ meta ----
root_fs=$(findmnt -n -o FSTYPE /)
if grep -qs none "/sys/fs/ext4/$(basename "$(findmnt -n -o SOURCE /)")/journal_task"; then
	root_fs+=", no journal"
fi
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
	echo "cpu_flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'sha_ni|aes|avx2|vaes|avx512f' | tr '\n' ' ')"
	echo "memory: $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
	echo "kernel: $(uname -r)"
	echo "rig_fs: $(findmnt -n -o FSTYPE --target "$RIG_DIR") at $RIG_DIR (root file system: $root_fs)"
	echo "nbship: $(dist/nbship-linux-amd64 --version) ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' ':!BENCHMARKS.md' 2>/dev/null || echo ', dirty tree'))"
	echo "go: $(go version | cut -d' ' -f3)"
	echo "tools: $(nix --version | head -1); $(ssh -V 2>&1); $(openssl version | cut -d' ' -f1-2); gzip $(gzip --version | head -1 | cut -d' ' -f2); zstd $(zstd --version | grep -o 'v[0-9.]*'); $(hyperfine --version)"
	echo "runs: $warmup warm-up + $runs"
	echo "links: $links"
	echo "delay_rate: $delay_rate"
	echo "load_start: $(loadavg)"
} >"$BENCH_RAW/meta.txt"
cat "$BENCH_RAW/meta.txt"

# ------------------------------------------------------------------ data ----
note "data: netboot files (build the c2.large.arm image on the builder, publish it once)"
cat >"$BENCH_WORK/c2.large.arm.nix" <<EOF
import $top/testdata/instances/c2.large.arm.nix { salt = "bench"; }
EOF
{ cat "$RIG_CONFIG"; echo "nixFile $BENCH_WORK/c2.large.arm.nix"; echo "instance c2.large.arm"; } >"$BENCH_WORK/builders.conf"
export BENCH_CONF=$BENCH_WORK/builders.conf
first=$(cd "$BENCH_WORK" && rig exec op -- "$BENCH_WORK/bin/nbship" aarch64 --config "$BENCH_CONF" \
	--remote-nbship "$BENCH_WORK/nbship" --json)
BENCH_DRV=$(jq -r .drv <<<"$first")
BENCH_NETBOOT_OUT=$(jq -r .out <<<"$first")
export BENCH_DRV BENCH_NETBOOT_OUT
echo "netboot: drv $BENCH_DRV out $BENCH_NETBOOT_OUT" | tee -a "$BENCH_RAW/meta.txt"

# store_dataset NAME ATTR [FILE]: build ATTR of FILE (bench/closure.nix) in the builder's
# store; write NAME.top, NAME.paths (the closure), NAME.links (a directory of
# symlinks to its paths, what the file contenders send) and NAME.sum.
store_dataset() {
	local name=$1 attr=$2 file=${3:-closure.nix} libs t0 p paths args=()
	libs=$(ldd /usr/bin/nix | awk '$3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u | tr '\n' ' ')
	[ "$file" = closure.nix ] && args=(--argstr libs "$libs")
	t0=$(date +%s)
	rig exec build -- nix-build "$top/bench/$file" -A "$attr" "${args[@]}" --no-out-link \
		>"$BENCH_WORK/$name.top" 2>"$BENCH_WORK/$name.build.log" ||
		die "building $attr in the builder's store failed: $(tail -n5 "$BENCH_WORK/$name.build.log")"
	rig exec build -- nix-store -qR "$(<"$BENCH_WORK/$name.top")" >"$BENCH_WORK/$name.paths"
	rm -rf "$BENCH_WORK/$name.links"
	mkdir "$BENCH_WORK/$name.links"
	while read -r p; do ln -s "$p" "$BENCH_WORK/$name.links/${p##*/}"; done <"$BENCH_WORK/$name.paths"
	bash bench/contender.sh sum "$name.setup.x" >"$BENCH_WORK/$name.sum"
	local files bytes
	mapfile -t paths <"$BENCH_WORK/$name.paths"
	read -r files bytes < <(rig exec build -- sh -c 'find "$@" -type f -printf "%s\n" | awk "{ n++; s += \$1 } END { printf \"%d %.0f\\n\", n, s }"' _ "${paths[@]}")
	echo "$name: $(wc -l <"$BENCH_WORK/$name.paths") store paths, $files files, $bytes bytes (built in $(($(date +%s) - t0)) s), top $(<"$BENCH_WORK/$name.top")" | tee -a "$BENCH_RAW/meta.txt"
	# The yardstick of the 100 Mbit target: the closure's size in zstd,
	# compressed as the zstd-nc contender does (tar | zstd -T0: level 3).
	[ "$name" = closure ] || return 0
	local zbytes
	zbytes=$(rig exec build -- sh -c 'tar -hcf - -C /nix/store "$@" | zstd -T0 -q | wc -c' _ "${paths[@]##*/}")
	echo "${name}_zstd: $zbytes bytes (tar -hcf - PATHS | zstd -T0, level 3)" | tee -a "$BENCH_RAW/meta.txt"
}
note "data: netboot sums"
bash bench/contender.sh sum netboot.setup.x >"$BENCH_WORK/netboot.sum"
note "data: the ~400 MB closure in the builder's store"
store_dataset closure closure

# nbship ship --store is being written; picked up when the binary has it.
store_ok=0
if help=$("$BENCH_WORK/bin/nbship" ship --help 2>&1) && grep -q -- '--store' <<<"$help"; then
	store_ok=1
	BENCH_SHIP_ARGS=
	grep -q -- '--config' <<<"$help" && BENCH_SHIP_ARGS="--config $BENCH_CONF"
	BENCH_SHIP_ARGS+=${BENCH_SHIP_EXTRA:+ $BENCH_SHIP_EXTRA}
	export BENCH_SHIP_ARGS
	echo "ship --store: available (extra args: ${BENCH_SHIP_ARGS:-none})" | tee -a "$BENCH_RAW/meta.txt"
else
	echo "ship --store: not available in this nbship (not run: ship --store not yet available)" | tee -a "$BENCH_RAW/meta.txt"
fi

# --------------------------------------------------------------- timing ----

# hf SCENARIO [WARMUP RUNS]: hyperfine one scenario; a failure is recorded
# and the bench goes on.
hf() {
	local s=$1 w=${2:-$warmup} r=${3:-$runs} t0
	[[ $s =~ $only ]] || return 0
	local h
	for h in op build pxe; do
		if ! [ -r "$RIG_DIR/$h/anchor.pid" ] || ! [ -d "/proc/$(<"$RIG_DIR/$h/anchor.pid")" ]; then
			die "the rig went away under the bench before $s (was rig.sh down run by someone not holding /run/lock/nbship-rig.lock?)"
		fi
	done
	t0=$(date +%s)
	rm -f "$BENCH_RAW/runs/$s.jsonl"
	bash bench/contender.sh describe "$s" | sed "s|^|$s: |" >>"$BENCH_RAW/commands.txt"
	note "$s: $w warm-up + $r runs (load $(loadavg))"
	if hyperfine -N --show-output --warmup "$w" --runs "$r" \
		--prepare "bash $top/bench/contender.sh prepare $s" \
		--command-name "$s" --export-json "$BENCH_RAW/hyperfine/$s.json" \
		"bash $top/bench/contender.sh run $s" &&
		bash bench/contender.sh verify "$s"; then
		echo "$s ok $(($(date +%s) - t0))s load $(loadavg)" >>"$BENCH_RAW/scenarios.txt"
	else
		echo "$s FAILED $(($(date +%s) - t0))s load $(loadavg)" >>"$BENCH_RAW/scenarios.txt"
		note "$s FAILED; going on"
	fi
}

# Which contenders run on which link. The full matrix (BENCH_FULL=1) takes
# about twice as long; by default the closure skips cells that add time but
# no information on this machine: at 1gbit every closure contender runs as
# in the unshaped case (none reaches 1 Gbit/s here; the unshaped table shows
# each one's rate on its busiest link), and at 100mbit the gzip pipelines stay
# CPU-bound below the link rate, and nix-copy-closure is two link-bound hops
# in a row.
netboot_set="nbship nbship-bare seed seed-ssh ssh-tar zstd-nc"
closure_all="nbship-store nbship-bare seed seed-ssh ssh-tar nix-copy nix-copy-closure zstd-nc"
closure_set() { # closure_set LINK
	if [ "${BENCH_FULL:-0}" = 1 ] || [ "$1" = unshaped ]; then
		echo "$closure_all"
	elif [ "$1" = 100mbit ]; then
		echo "nbship-store nbship-bare nix-copy zstd-nc"
	fi
}

# The contenders on a long link (rttN): every tool of the issue on the
# closures; the netboot files are not store paths the store tools ship here.
# zstd-nc, one plain TCP stream of about nbship's bytes, shows what the
# long link gives a single connection.
delay_netboot_set="nbship seed seed-ssh ssh-tar zstd-nc"
delay_closure_set="nbship-store nix-copy nix-copy-closure ssh-tar seed seed-ssh zstd-nc"
many_ready=0
need_many() { # build the 1,000-path closure once, when a scenario needs it
	[ "$many_ready" = 1 ] && return 0
	note "data: the 1,000-path closure in the builder's store"
	store_dataset many many many.nix
	many_ready=1
}

for link in $links; do
	case $link in
	rtt[0-9]*)
		# rttN: N ms at BENCH_DELAY_RATE; rttNg: N ms at 1 Gbit/s.
		shape_all off
		case $link in
		*g) rig delay "$(tr -dc 0-9 <<<"$link")" 1000mbit ;;
		*) rig delay "${link#rtt}" "$delay_rate" ;;
		esac
		for c in $delay_netboot_set; do
			hf "netboot.$link.$c"
		done
		for d in closure many; do
			for c in $delay_closure_set; do
				[ "$c" = nbship-store ] && [ "$store_ok" != 1 ] && continue
				[[ $d.$link.$c =~ $only ]] || continue
				# The per-path tools take minutes a run on a long link
				# (nix copy of many at 100 ms: 5.6 min): no warm-up for
				# them, and nix-copy-closure (two such copies in a row)
				# beyond 20 ms only with BENCH_FULL=1.
				w=$warmup
				case $c in nix-copy | nix-copy-closure) w=0 ;; esac
				if [ "$c" = nix-copy-closure ] && [ "${link#rtt}" -gt 20 ] && [ "${BENCH_FULL:-0}" != 1 ]; then
					continue
				fi
				[ "$d" = many ] && need_many
				hf "$d.$link.$c" "$w" "$runs"
			done
		done
		rig undelay
		# netdelay's counts (delivered, dropped per destination), written as it stopped.
		{ echo "== $link"; cat "$RIG_DIR/delay/netdelay.log"; } >>"$BENCH_RAW/netdelay.log" 2>/dev/null || true
		continue
		;;
	unshaped) shape_all off ;;
	*) shape_all "$link" ;;
	esac
	for c in $netboot_set; do
		hf "netboot.$link.$c"
	done
	for c in $(closure_set "$link"); do
		[ "$c" = nbship-store ] && [ "$store_ok" != 1 ] && continue
		# On a shaped link the bare file ship of the closure is only needed
		# when the store ship could not be measured.
		if [ "$c" = nbship-bare ] && [ "$link" != unshaped ] && [ "${BENCH_FULL:-0}" != 1 ] &&
			grep -q "^closure.$link.nbship-store ok" "$BENCH_RAW/scenarios.txt" 2>/dev/null; then
			continue
		fi
		hf "closure.$link.$c"
	done
done
shape_all off

# Half of the closure in a binary cache of pxe's own (ship -s against
# nix copy -s, at 100 Mbit): the first half of the closure's paths
# (nix-store -qR lists dependencies first, so the half is closed), copied
# by the builder into a file:// cache signed with a key made here
# (uncompressed: a cache close to pxe), which pxe's nix.conf names as its
# substituter and trusted key (rig.sh nixconf; back to the default after).
if [ "$store_ok" = 1 ] && [[ "halfcache.100mbit.nbship-store halfcache.100mbit.nix-copy" =~ $only ]]; then
	note "data: half of the closure in a binary cache pxe substitutes from"
	cache=$BENCH_WORK/cache
	rm -rf "$cache" "$BENCH_WORK/cache.sk" "$BENCH_WORK/cache.pk"
	rig exec build -- nix-store --generate-binary-cache-key nbship-bench-1 "$BENCH_WORK/cache.sk" "$BENCH_WORK/cache.pk"
	mapfile -t paths <"$BENCH_WORK/closure.paths"
	rig exec build -- nix copy --to "file://$cache?secret-key=$BENCH_WORK/cache.sk&compression=none" "${paths[@]:0:$((${#paths[@]} / 2))}"
	printf 'substituters = file://%s\ntrusted-public-keys = %s\n' "$cache" "$(<"$BENCH_WORK/cache.pk")" >"$BENCH_WORK/cache.conf"
	echo "halfcache: $(find "$cache" -name '*.narinfo' | wc -l) of the closure's $(wc -l <"$BENCH_WORK/closure.paths") paths in pxe's binary cache, $(du -sb "$cache/nar" | cut -f1) bytes of NARs" | tee -a "$BENCH_RAW/meta.txt"
	rig nixconf pxe "$BENCH_WORK/cache.conf"
	shape_all 100mbit
	hf halfcache.100mbit.nbship-store
	hf halfcache.100mbit.nix-copy
	shape_all off
	rig nixconf pxe
fi

# Data already there: the fixed cost of a run, and what re-shipping moves.
hf netboot.unshaped.nbship-noop
[ "$store_ok" = 1 ] && hf closure.unshaped.nbship-store-noop

# Peak RSS of each end for a ~2 GiB closure (synthetic data, see closure.nix).
if [ "${BENCH_BIG:-1}" = 1 ] && [[ "big.unshaped.nbship-store big.unshaped.nbship-bare" =~ $only ]]; then
	note "data: the ~2 GiB closure in the builder's store"
	store_dataset big big
	[ "$store_ok" = 1 ] && hf big.unshaped.nbship-store 0 1
	# The file ship of the same data when the store ship could not be measured.
	grep -q '^big.unshaped.nbship-store ok' "$BENCH_RAW/scenarios.txt" 2>/dev/null || hf big.unshaped.nbship-bare 0 1
	mapfile -t paths <"$BENCH_WORK/big.paths"
	rig exec pxe -- nix-store --delete --ignore-liveness "${paths[@]}" >/dev/null 2>&1 || true
	rm -rf "${BENCH_DST:?}"/*
fi

# Resume: a netboot image whose initrd has 2 GiB of random bytes appended,
# shipped once to build it and learn its derivation, then again with the
# build-pxe link dropped at 90% of the initrd (contender.sh
# c_nbship_resume): the retry's summary says what it sent again.
if [ "${BENCH_BIG:-1}" = 1 ] && [[ resume.unshaped.nbship-resume =~ $only ]]; then
	note "data: a netboot image with a 2 GiB initrd, for the resume row"
	cat >"$BENCH_WORK/resume.nix" <<NIX
let base = import $top/testdata/instances/c2.large.arm.nix { salt = "bench-resume"; }; in
derivation {
  name = "netboot-resume";
  system = base.system;
  builder = "/bin/sh";
  args = [ "-c" ''
    /bin/mkdir \$out
    /bin/cp \${base}/netboot.ipxe \${base}/Image \$out/
    /bin/cat \${base}/initrd > \$out/initrd
    /usr/bin/head -c 2147483648 /dev/urandom >> \$out/initrd
  '' ];
}
NIX
	{ cat "$RIG_CONFIG"; echo "nixFile $BENCH_WORK/resume.nix"; echo "instance c2.large.arm"; } >"$BENCH_WORK/resume.conf"
	first=$(cd "$BENCH_WORK" && rig exec op -- "$BENCH_WORK/bin/nbship" aarch64 --config "$BENCH_WORK/resume.conf" \
		--remote-nbship "$BENCH_WORK/nbship" --json)
	BENCH_RESUME_DRV=$(jq -r .drv <<<"$first")
	BENCH_RESUME_OUT=$(jq -r .out <<<"$first")
	export BENCH_RESUME_DRV BENCH_RESUME_OUT BENCH_RESUME_CONF=$BENCH_WORK/resume.conf
	echo "resume: drv $BENCH_RESUME_DRV out $BENCH_RESUME_OUT, initrd $(rig exec build -- stat -c %s "$BENCH_RESUME_OUT/initrd") bytes" | tee -a "$BENCH_RAW/meta.txt"
	bash bench/contender.sh sum resume.setup.x >"$BENCH_WORK/resume.sum"
	hf resume.unshaped.nbship-resume 0 1
	rm -rf "${RIG_PXE_DIR:?}/hydra-c2.large.arm" "$RIG_PXE_DIR/.nbship/generations/c2.large.arm"
	rig exec build -- nix-store --delete --ignore-liveness "$BENCH_RESUME_OUT" >/dev/null 2>&1 || true
fi

# Go benchmarks of the stream and the channel (bench/gobench.sh) only when
# asked: they take minutes, and their output is meant for benchstat.
if [ "${BENCH_GO:-0}" = 1 ]; then
	bash bench/gobench.sh || note "go test -bench failed (see bench/results/gobench.txt)"
fi

echo "load_end: $(loadavg)" >>"$BENCH_RAW/meta.txt"
echo "total_seconds: $(($(date +%s) - started))" >>"$BENCH_RAW/meta.txt"
note "writing $doc"
[ -e "$doc" ] || cp BENCHMARKS.md "$doc"
go run ./bench/report -results "$BENCH_RAW" -doc "$doc"
note "done in $(($(date +%s) - started)) s; raw output in $BENCH_RAW"
