#!/bin/bash
# rss-wrapper.sh — nbship as `make bench` runs it on the rig's hosts
# (--remote-nbship), installed by bench/run.sh as $BENCH_WORK/nbship beside
# bin/nbship (the amd64 binary: a native sender, not qemu-user).
#
# It becomes GNU time running nbship (exec: same process, stdin, stdout and
# exit status as nbship alone), and records two peak RSS figures in KiB in
# the directory rss/current names, as rss.ROLE.PID.{self,tree} (ROLE is the
# subcommand, send or recv):
#   self  nbship's own VmHWM (the kernel's high-water mark), polled every
#         50 ms by a detached poller; growth in nbship's last 50 ms is missed
#         (a transfer peaks mid-stream; a process of a few ms reads low);
#   tree  GNU time's figure: nbship or any child it waited for, such as
#         nix-store --import on a receiving store.
# Nothing before the exec forks, so the wrapper costs a bash start-up.
here=${BASH_SOURCE[0]%/*}
read -r dir <"$here/rss/current" 2>/dev/null || dir=$here/rss/other
out=$dir/rss.${1:-none}.$$
(
	exec 0</dev/null 1>/dev/null 2>/dev/null
	# Sleep between polls on a read that times out on a FIFO nobody writes.
	mkfifo "$out.tick" && exec 3<>"$out.tick" && rm -f "$out.tick"
	pid='' last=0
	for _ in {1..400}; do # nbship: the child of this PID that is not us
		read -r -a kids <"/proc/$$/task/$$/children" 2>/dev/null
		for k in "${kids[@]}"; do [ "$k" != "$BASHPID" ] && pid=$k; done
		[ -n "$pid" ] && break
		read -r -t 0.005 -u 3 _
	done
	[ -n "$pid" ] || exit 0
	while :; do
		hwm=
		while read -r k v _; do
			if [ "$k" = VmHWM: ]; then
				hwm=$v
				break
			fi
		done <"/proc/$pid/status" 2>/dev/null
		[ -n "$hwm" ] || exit 0 # gone, or a zombie with no memory left
		if [ "$hwm" -gt "$last" ]; then
			echo "$hwm" >"$out.self"
			last=$hwm
		fi
		read -r -t 0.05 -u 3 _
	done
) &
exec /usr/bin/time -f %M -o "$out.tree" "$here/bin/nbship" "$@"
