#!/usr/bin/env bash
# contender.sh — one step of one benchmark scenario, as hyperfine calls it.
#
#   contender.sh prepare SCENARIO   reset the destination, sync, pre-warm the source
#   contender.sh run SCENARIO       one timed run; appends a record to
#                                   $BENCH_RAW/runs/SCENARIO.jsonl
#   contender.sh verify SCENARIO    check the last run's data arrived intact
#   contender.sh describe SCENARIO  print the contender's commands
#
# SCENARIO is DATASET.LINK.CONTENDER, e.g. netboot.100mbit.seed. DATASET is
# netboot, closure, many (1,000 small store paths), big or resume (a netboot
# image whose initrd has 2 GiB of random bytes appended); LINK only names
# the shaping or delay (run.sh applies it).
# CONTENDER:
#   nbship             netboot: `nbship aarch64 --drv DRV` from the operator (the
#                      ship step: SSH, checks, send/recv, transfer, verify, publish)
#   nbship-noop        the same with the image already published (nothing to send)
#   nbship-bare        nbship send on build, nbship recv on pxe, started directly
#                      (no SSH), pins exchanged through pipes, as scripts/demo.sh did
#   nbship-store       closure: `nbship ship --store` from the operator
#   nbship-store-noop  the same with the closure already in the PXE store
#   nbship-resume      resume: `nbship aarch64 --drv DRV --retries 1` with the
#                      build-pxe link dropped when 90% of the 2 GiB initrd has
#                      arrived; the retry's summary says what it sent again
#   seed               tar -hczf | openssl enc -aes-256-cbc -k PSK | nc  →  nc -l | openssl enc -d | tar xzf
#                      (both ends started directly on their hosts: no SSH)
#   seed-ssh           the same, as the old scripts ran it: both ends started from
#                      the operator over SSH, the build host trying the port until
#                      the listener is up (their sleep-and-poll)
#   ssh-tar            ssh builder tar -hczf | ssh pxe tar xzf (through the operator)
#   nix-copy           nix copy --from ssh://builder --to ssh://pxe (through the operator)
#   nix-copy-closure   nix-copy-closure --from builder, then --to pxe (through the operator)
#   zstd-nc            tar -hcf | zstd -T0 | nc  →  nc -l | zstd -d | tar xf (no encryption)
#
# run.sh exports the environment this needs (BENCH_*, RIG_*).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step=${1:?usage: contender.sh prepare|run|verify|describe SCENARIO}
scenario=${2:?usage: contender.sh prepare|run|verify|describe SCENARIO}
IFS=. read -r dataset link contender <<<"$scenario"
: "${link:?}" "${contender:?bad scenario $scenario}"

W=$BENCH_WORK/nbship # the wrapper: the real nbship under /usr/bin/time
BIN=$BENCH_WORK/bin/nbship
SLOT=c2.large.arm
DST=$BENCH_DST/$contender

case $dataset in
netboot)
	SRC=$BENCH_NETBOOT_OUT
	NAMES=(Image initrd netboot.ipxe)
	SEND_SRC=$BENCH_NETBOOT_OUT
	;;
resume)
	SRC=$BENCH_RESUME_OUT
	NAMES=(Image initrd netboot.ipxe)
	SEND_SRC=$BENCH_RESUME_OUT
	;;
closure | big | many | halfcache)
	# halfcache: the closure, half of it in pxe's binary cache (run.sh);
	# the store contenders substitute on the destination (-s).
	data=$dataset
	SUBST=
	[ "$dataset" = halfcache ] && data=closure && SUBST=-s
	SRC=/nix/store
	paths_file=$BENCH_WORK/$data.paths
	mapfile -t PATHS <"$paths_file"
	NAMES=("${PATHS[@]##*/}")
	SEND_SRC=$BENCH_WORK/$data.links # one symlink per store path
	TOP_PATH=$(<"$BENCH_WORK/$data.top")
	;;
*) die "unknown dataset $dataset" ;;
esac

# ---------------------------------------------------------------- prepare --

reset_dir() { # a fresh, empty destination the netboot user can write to
	rm -rf --one-file-system "$DST"
	mkdir -p "$DST"
	chown netboot: "$DST"
}

delete_store_paths() { # HOST: remove the dataset's paths from that host's store
	on "$1" nix-store --delete --ignore-liveness "${PATHS[@]}" >/dev/null 2>&1 || true
	if on "$1" nix-store --check-validity "${PATHS[@]}" 2>/dev/null; then
		die "could not delete the $dataset paths from $1's store"
	fi
}

prepare() {
	case $contender in
	nbship | nbship-resume) rm -rf "$RIG_PXE_DIR/hydra-$SLOT" "$RIG_PXE_DIR/.nbship/generations/$SLOT" ;;
	nbship-noop) # the image must be there already; ship it once if not
		[ -e "$RIG_PXE_DIR/hydra-$SLOT/initrd" ] || { rec=$(mktemp -d "$BENCH_WORK/XXXXXX") && c_nbship; } ;;
	nbship-store-noop)
		on pxe nix-store --check-validity "${PATHS[@]}" >/dev/null 2>&1 || { rec=$(mktemp -d "$BENCH_WORK/XXXXXX") && c_nbship_store; } ;;
	nbship-store | nix-copy) delete_store_paths pxe ;;
	nix-copy-closure) delete_store_paths pxe && delete_store_paths op ;;
	*) rm -rf --one-file-system "$DST" ;;
	esac
	case $contender in
	seed | seed-ssh | ssh-tar | zstd-nc) reset_dir ;;
	esac
	# Same page-cache state for everyone: dirty pages of the previous run
	# written back, the source in the cache, the disk idle.
	sync
	on build bash -c 'cd "$1" && shift && find -L "$@" -type f -print0 | xargs -0 -r cat >/dev/null' _ "$SRC" "${NAMES[@]}"
	settle
}

# -------------------------------------------------------------------- run --

ssh_opts() { echo "$RIG_SSH_OPTS"; }

c_nbship() {
	(cd "$BENCH_WORK" && on op /usr/bin/time -f %M -o "$rec/ctl.rss" "$BIN" aarch64 --config "$BENCH_CONF" --drv "$BENCH_DRV" \
		--remote-nbship "$W" --json) >"$rec/out" 2>"$rec/err"
}

# The link drops when 90% of the initrd is in the receiver's staging; the
# retry goes over SSH (the direct link is down) and continues the initrd.
c_nbship_resume() {
	local pid size gens f n=0 rc=0
	size=$(on build stat -c %s "$BENCH_RESUME_OUT/initrd")
	gens=$RIG_PXE_DIR/.nbship/generations/$SLOT
	(cd "$BENCH_WORK" && on op "$BIN" aarch64 --config "$BENCH_RESUME_CONF" --drv "$BENCH_RESUME_DRV" \
		--retries 1 --remote-nbship "$W" --json) >"$rec/out" 2>"$rec/err" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null && [ "$n" -lt $((size * 9 / 10)) ]; do
		for f in "$gens"/.staging-*/initrd; do
			[ -e "$f" ] && n=$(stat -c %s "$f" 2>/dev/null || echo 0)
		done
		sleep 0.005
	done
	rig link build-pxe down
	wait "$pid" || rc=$?
	rig link build-pxe up
	return "$rc"
}

c_nbship_store() {
	# Store paths on stdin, as `nix-store -qR $out | nbship ship ... --store`.
	# shellcheck disable=SC2086
	(cd "$BENCH_WORK" && on op /usr/bin/time -f %M -o "$rec/ctl.rss" "$BIN" ship --from root@builder --to netboot@pxe --store \
		$BENCH_SHIP_ARGS ${SUBST:-} --remote-nbship "$W" --json) <"$paths_file" >"$rec/out" 2>"$rec/err"
}

# The FIFOs are made before the clock starts and the RSS figures read after
# it stops (run calls c_X_before and c_X_after when they exist): the timed
# part is the two ends and the pins between them, with no process of the
# harness's own but the two nsenter.
c_nbship_bare_before() {
	mkfifo "$rec/r.in" "$rec/r.out" "$rec/s.in" "$rec/s.out"
}

c_nbship_bare() {
	local d=$rec rfp addr sfp rp sp rs=0 ss=0 r_in r_out s_in s_out l
	# Both ends start at once, as the controller starts them when the port
	# is known: the sender dials only once it has the receiver's pin. The
	# binary itself, not the GNU time wrapper (whose bash, poller and time
	# would add processes to the timed part that the pipelines beside it do
	# not have): each end reports its own peak RSS in its --json summary.
	on pxe "$BIN" recv --listen "$PXE_DIRECT:$PORT_NBSHIP" --dest "$DST" --peer-pin - --json \
		<"$d/r.in" >"$d/r.out" 2>"$d/recv.err" &
	rp=$!
	on build "$BIN" send --connect "$PXE_DIRECT:$PORT_NBSHIP" --peer-pin - --json "$SEND_SRC" \
		<"$d/s.in" >"$d/s.out" 2>"$d/send.err" &
	sp=$!
	exec {r_in}>"$d/r.in" {r_out}<"$d/r.out" {s_in}>"$d/s.in" {s_out}<"$d/s.out"
	read -r rfp <&"$r_out" || true
	read -r _ addr <&"$r_out" || true
	[ -n "$addr" ] || die "recv did not start: $(cat "$d/recv.err")"
	read -r sfp <&"$s_out" || die "send did not start: $(cat "$d/send.err")"
	echo "$sfp" >&"$r_in"
	echo "$rfp" >&"$s_in"
	while IFS= read -r l <&"$s_out"; do # after "connected ...": the summary
		[[ $l == '{'* ]] && printf '%s\n' "$l" >"$d/out"
	done
	wait "$sp" || ss=$?
	while IFS= read -r l <&"$r_out"; do printf '%s\n' "$l"; done >"$d/recv.out"
	wait "$rp" || rs=$?
	exec {r_in}>&- {r_out}<&- {s_in}>&- {s_out}<&-
	if [ "$ss" != 0 ] || [ "$rs" != 0 ]; then
		die "send exited $ss, recv $rs: $(tail -n3 "$d/send.err" "$d/recv.err")"
	fi
}

c_nbship_bare_after() {
	rm -f "$rec/r.in" "$rec/r.out" "$rec/s.in" "$rec/s.out"
	# As rss-wrapper.sh would have written them: no children here, so the
	# tree's peak is the end's own.
	local role f
	for role in send recv; do
		f=$rec/out
		[ "$role" = recv ] && f=$rec/recv.out
		jq -r '.peak_rss_kib // empty' "$f" | tee "$rec/rss.$role.0.self" >"$rec/rss.$role.0.tree"
	done
}

# nc_pipe PORT SEND RECV: RECV (reading the socket on stdin) listens on pxe,
# SEND (its stdout goes to the socket) runs on build once the port is open.
nc_pipe() {
	local port=$1 send=$2 recv=$3 rp rs=0
	on pxe bash -o pipefail -c "nc -l $PXE_DIRECT $port </dev/null | $recv" >"$rec/recv.out" 2>"$rec/recv.err" &
	rp=$!
	wait_listen pxe "$port"
	on build bash -o pipefail -c "$send | nc -N $PXE_DIRECT $port" >"$rec/out" 2>"$rec/err" ||
		die "sender failed: $(tail -n3 "$rec/err")"
	wait "$rp" || rs=$?
	[ "$rs" = 0 ] || die "receiver exited $rs: $(tail -n3 "$rec/recv.err")"
}

q() { printf '%q ' "$@"; }

c_seed() {
	# The PSK as the old script made it: md5sum of random bytes. Its setup
	# (PSK, listener, waiting for the port) is part of the measured run.
	local psk
	psk=$(head -c 32 /dev/urandom | md5sum | cut -d' ' -f1)
	nc_pipe "$PORT_SEED" \
		"tar -hczf - -C $(q "$SRC" "${NAMES[@]}")| openssl enc -aes-256-cbc -e -k $psk 2>/dev/null" \
		"openssl enc -aes-256-cbc -d -k $psk 2>/dev/null | tar xzf - -C $(q "$DST")"
}

c_seed_ssh() {
	# One SSH connection to each host from the operator, at once, as the
	# old script's two ssh commands. The sender's loop stands for its
	# sleep-and-poll: a refused connection fails the pipeline at once and
	# it starts again 0.1 s later (a probe would take nc -l's one accept).
	local o psk recv send
	o=$(ssh_opts)
	psk=$(head -c 32 /dev/urandom | md5sum | cut -d' ' -f1)
	recv="nc -l $PXE_DIRECT $PORT_SEED </dev/null | openssl enc -aes-256-cbc -d -k $psk 2>/dev/null | tar xzf - -C $(q "$DST")"
	send="n=0; until tar -hczf - -C $(q "$SRC" "${NAMES[@]}")| openssl enc -aes-256-cbc -e -k $psk 2>/dev/null | nc -N $PXE_DIRECT $PORT_SEED; do n=\$((n + 1)); [ \$n -lt 100 ] || exit 1; sleep 0.1; done"
	(cd / && on op bash -o pipefail -c \
		"ssh $o pxe $(q "$(q bash -o pipefail -c "$recv")") 2>\"\$1\" & rp=\$!; ssh $o builder $(q "$(q bash -o pipefail -c "$send")") && wait \$rp" _ "$rec/recv.err") \
		>"$rec/out" 2>"$rec/err"
}

c_zstd_nc() {
	nc_pipe "$PORT_ZSTD" \
		"tar -hcf - -C $(q "$SRC" "${NAMES[@]}")| zstd -T0 -q" \
		"zstd -d -q | tar xf - -C $(q "$DST")"
}

c_ssh_tar() {
	local o
	o=$(ssh_opts)
	(cd / && on op bash -o pipefail -c \
		"ssh $o builder $(q "$(q tar -hczf - -C "$SRC" "${NAMES[@]}")") | ssh $o pxe $(q "$(q tar xzf - -C "$DST")")") \
		>"$rec/out" 2>"$rec/err"
}

c_nix_copy() {
	(cd / && on op env NIX_SSHOPTS="$RIG_SSH_OPTS" \
		nix copy --no-check-sigs ${SUBST:-} --from ssh://builder --to ssh://pxe "$TOP_PATH") >"$rec/out" 2>"$rec/err"
}

c_nix_copy_closure() {
	(cd / && on op env NIX_SSHOPTS="$RIG_SSH_OPTS" sh -c \
		'nix-copy-closure --from builder "$1" && nix-copy-closure --to pxe "$1"' _ "$TOP_PATH") >"$rec/out" 2>"$rec/err"
}

rss_of() { # rss_of ROLE self|tree: that end's peak RSS in KiB (see rss-wrapper.sh), or null
	local f v=
	for f in "$rec/rss.$1".*."$2"; do
		[ -e "$f" ] || continue
		while read -r l; do [ -n "$l" ] && v=$l; done <"$f" # GNU time's last line
	done
	case $v in '' | *[!0-9]*) echo null ;; *) echo "$v" ;; esac
}

run() {
	local runs=$BENCH_WORK/runs/$scenario
	mkdir -p "$runs" "$BENCH_RAW/runs"
	rec=$(mktemp -d "$runs/XXXXXX")
	chmod 1777 "$rec"
	echo "$rec" >"$BENCH_WORK/rss/current"
	local w0 w1 t0 t1 l0 fn=c_${contender//-/_}
	fn=${fn%_noop}
	l0=$(loadavg)
	w0=$(wire)
	# The harness's own clock, tight around the contender (hyperfine's
	# times also include this script's bookkeeping).
	if declare -F "${fn}_before" >/dev/null; then "${fn}_before"; fi
	t0=$EPOCHREALTIME
	if ! "$fn"; then
		# Keep what the failed run printed: $rec goes away with the rig.
		mkdir -p "$BENCH_RAW/failed"
		cp -r "$rec" "$BENCH_RAW/failed/$scenario.${rec##*/}"
		die "$scenario failed; its output is in bench/results/failed/$scenario.${rec##*/}: $(tail -qn3 "$rec"/*err 2>/dev/null)"
	fi
	t1=$EPOCHREALTIME
	if declare -F "${fn}_after" >/dev/null; then "${fn}_after"; fi
	w1=$(wire)
	local summary=null ctl=null
	if [ -s "$rec/out" ] && head -c1 "$rec/out" | grep -q '{'; then
		summary=$(grep '^{' "$rec/out" | tail -n1)
	fi
	[ -s "$rec/ctl.rss" ] && ctl=$(tail -n1 "$rec/ctl.rss")
	{
		printf '{"seconds":%s,"load":"%s",' "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')" "$l0"
		printf '"wire":{'
		join -j1 <(echo "$w0" | sort) <(echo "$w1" | sort) | awk '{ printf "%s\"%s\":%.0f", (NR > 1 ? "," : ""), $1, $3 - $2 }'
		printf '},"rss_kib":{"send":%s,"recv":%s,"ctl":%s,"send_tree":%s,"recv_tree":%s},"summary":%s}\n' \
			"$(rss_of send self)" "$(rss_of recv self)" "$ctl" "$(rss_of send tree)" "$(rss_of recv tree)" "$summary"
	} >>"$BENCH_RAW/runs/$scenario.jsonl"
	echo "$BENCH_WORK/rss/other" >"$BENCH_WORK/rss/current"
}

# ----------------------------------------------------------------- verify --

# tree_sum HOST DIR: one hash over every file's name and SHA-256 under DIR/NAMES.
tree_sum() {
	on "$1" bash -c 'cd "$1" && shift && find -L "$@" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum' _ "$2" "${NAMES[@]}"
}

verify() {
	local want got
	want=$(cat "$BENCH_WORK/${data:-$dataset}.sum")
	case $contender in
	nbship | nbship-noop | nbship-resume) got=$(tree_sum pxe "$RIG_PXE_DIR/hydra-$SLOT/") ;;
	nbship-store | nbship-store-noop | nix-copy | nix-copy-closure)
		on pxe nix-store --check-validity "${PATHS[@]}" || die "$scenario: the closure is not valid in pxe's store"
		got=$(tree_sum pxe /nix/store)
		;;
	*) got=$(tree_sum pxe "$DST") ;;
	esac
	[ "$got" = "$want" ] || die "$scenario: what arrived differs from the source ($got, want $want)"
}

describe() {
	local o='$RIG_SSH_OPTS'
	case $contender in
	nbship | nbship-noop) echo "(op) nbship aarch64 --config builders.conf --drv $BENCH_DRV --remote-nbship WRAPPER --json" ;;
	nbship-resume) echo "(op) nbship aarch64 --config builders.conf --drv $BENCH_RESUME_DRV --retries 1 --remote-nbship WRAPPER --json; rig.sh link build-pxe down at 90% of initrd" ;;
	nbship-store | nbship-store-noop) echo "(op) nbship ship --from root@builder --to netboot@pxe --store $BENCH_SHIP_ARGS ${SUBST:-} --remote-nbship WRAPPER --json < PATHS" ;;
	nbship-bare)
		echo "(pxe) WRAPPER recv --listen $PXE_DIRECT:$PORT_NBSHIP --dest $DST --peer-pin - --json"
		echo "(build) WRAPPER send --connect $PXE_DIRECT:$PORT_NBSHIP --peer-pin - --json $SEND_SRC"
		;;
	seed)
		echo "(pxe) nc -l $PXE_DIRECT $PORT_SEED | openssl enc -aes-256-cbc -d -k PSK | tar xzf - -C $DST"
		echo "(build) tar -hczf - -C $SRC ${NAMES[*]} | openssl enc -aes-256-cbc -e -k PSK | nc -N $PXE_DIRECT $PORT_SEED"
		;;
	seed-ssh)
		echo "(op) ssh $o pxe 'nc -l $PXE_DIRECT $PORT_SEED | openssl enc -aes-256-cbc -d -k PSK | tar xzf - -C $DST' &"
		echo "(op) ssh $o builder 'until tar -hczf - -C $SRC ${NAMES[*]} | openssl enc -aes-256-cbc -e -k PSK | nc -N $PXE_DIRECT $PORT_SEED; do sleep 0.1; done'"
		;;
	zstd-nc)
		echo "(pxe) nc -l $PXE_DIRECT $PORT_ZSTD | zstd -d | tar xf - -C $DST"
		echo "(build) tar -hcf - -C $SRC ${NAMES[*]} | zstd -T0 | nc -N $PXE_DIRECT $PORT_ZSTD"
		;;
	ssh-tar) echo "(op) ssh $o builder tar -hczf - -C $SRC ${NAMES[*]} | ssh $o pxe tar xzf - -C $DST" ;;
	nix-copy) echo "(op) NIX_SSHOPTS=$o nix copy --no-check-sigs ${SUBST:-} --from ssh://builder --to ssh://pxe $TOP_PATH" ;;
	nix-copy-closure) echo "(op) NIX_SSHOPTS=$o sh -c 'nix-copy-closure --from builder $TOP_PATH && nix-copy-closure --to pxe $TOP_PATH'" ;;
	esac
}

case $step in
sum) tree_sum build "$SRC" ;;
prepare) prepare ;;
run) run ;;
verify) verify ;;
describe) describe ;;
*) die "unknown step $step" ;;
esac
