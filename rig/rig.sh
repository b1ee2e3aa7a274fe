#!/bin/bash
# rig.sh — three test hosts for nbship in network + mount namespaces.
#
#   op     the operator's laptop (controller). Nix single-user as root, no daemon.
#   build  the remote aarch64 build host: sshd (root), nix-daemon, uname says aarch64.
#   pxe    the PXE web server: sshd (netboot), nix-daemon, nginx serving pxeDir.
#
# Links (a triangle of veth pairs):
#   op 10.77.1.1 <-> build 10.77.1.2    op 10.77.2.1 <-> pxe 10.77.2.2
#   build 10.77.3.1 <-> pxe 10.77.3.2   (the direct build -> pxe data path)
#
# Usage:
#   rig.sh up                        tear down leftovers, bring everything up, wait until usable
#   rig.sh down                      kill everything the rig started, delete namespaces and state
#   rig.sh exec HOST -- CMD...       run CMD in HOST's network and mount namespaces
#                                    (for op, HOME is set to RIG_OP_HOME; cwd is kept)
#   rig.sh env                       print KEY='value' lines describing the running rig
#   rig.sh shape RATE|off            tbf-limit both ends of the build-pxe link (e.g. 100mbit)
#   rig.sh link NAME down|up         NAME: build-pxe (also op-build, op-pxe)
#   rig.sh delay RTT_MS RATE         route all three links through a router namespace
#                                    (nbs-delay) whose program (rig/netdelay) holds each
#                                    packet RTT_MS/2 per direction and sends at most RATE
#                                    (100mbit; 0 for no limit) per direction, with a
#                                    tail-drop queue of rate x RTT + 64 KiB; addresses,
#                                    device names and `shape` stay as they are
#   rig.sh undelay                   back to direct veth pairs (no-op when not delayed)
#   rig.sh rekey HOST                new ssh host key for HOST (build|pxe), sshd restarted;
#                                    the operator's known_hosts keeps the OLD key
#   rig.sh trust                     rewrite the operator's known_hosts with the current keys
#                                    (undoes the effect of rekey on the operator)
#   rig.sh nixconf HOST [FILE]       HOST's (build|pxe) nix.conf as up writes it, then FILE's
#                                    lines (a later setting overrides an earlier one); its
#                                    nix-daemon restarted to read it. No FILE: back to the default
#
# State lives in ${NBSHIP_RIG_DIR:-/var/lib/nbship-rig}; there is one rig per
# machine (namespace names are fixed). up/down/rekey take an exclusive flock on
# /run/lock/nbship-rig.lock unless the caller says it already holds it
# (NBSHIP_RIG_LOCKED=1, as the Go package internal/rig does: a test process
# holds the lock from its first use of the rig until it exits). A script that
# uses the rig for longer than one command (a demo) should hold it the same way,
# or a test process may tear the rig down under it:
#   flock -o /run/lock/nbship-rig.lock env NBSHIP_RIG_LOCKED=1 ./demo-steps.sh
# (-o: the script does not inherit the lock's descriptor. Without it, the
# rig's daemons would, and would hold the lock for as long as they run, long
# after the script ended; this script closes any it inherited, below, but
# other long-lived children of the script would not.)
#
# Driving OpenSSH's own `ssh` (or nix-copy-closure, which runs it) as the
# operator: ssh finds ~/.ssh through the password database (root -> /root), NOT
# through $HOME, so setting HOME=RIG_OP_HOME is not enough. Always pass
#   -F $RIG_OP_HOME/.ssh/config -o UserKnownHostsFile=$RIG_OP_HOME/.ssh/known_hosts
# which `rig.sh env` prints as RIG_SSH_OPTS (usable verbatim as NIX_SSHOPTS).
# Go code reading $HOME (nbship's own SSH client) sees RIG_OP_HOME as expected.
set -euo pipefail

RIG_DIR=${NBSHIP_RIG_DIR:-/var/lib/nbship-rig}
# ip, tc, sshd, useradd live in sbin, which a test runner's PATH may lack.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
LOCK=/run/lock/nbship-rig.lock
HOSTS=(op build pxe)
DELAY_NS=nbs-delay # the router namespace of `rig.sh delay`
DELAY_TUN=nbsdelay
DELAY_TABLE=77
BUILD_ADDR=10.77.1.2
PXE_ADDR=10.77.2.2
PXE_DIRECT_ADDR=10.77.3.2
PXE_USER=netboot
# veth pairs: name-in-first-ns first-ns name-in-second-ns second-ns addr1 addr2
LINKS=(
	"op-build op build-op build 10.77.1.1/24 10.77.1.2/24"
	"op-pxe op pxe-op pxe 10.77.2.1/24 10.77.2.2/24"
	"build-pxe build pxe-build pxe 10.77.3.1/24 10.77.3.2/24"
)
SELF=$(readlink -f "${BASH_SOURCE[0]}")

die() { echo "rig.sh: $*" >&2; exit 1; }

# Forks are slow on a loaded 2-core machine (~20 ms each), and every test
# process brings the rig up and down: prefer builtins in the hot paths.

# emit FILE writes its stdin (a here-document) to FILE without forking.
emit() {
	local text
	IFS= read -r -d '' text || true
	printf '%s' "$text" >"$1"
}
note() { echo "rig.sh: $*" >&2; }

check_dir() {
	case $RIG_DIR in
	/*) ;;
	*) die "NBSHIP_RIG_DIR must be an absolute path, got '$RIG_DIR'" ;;
	esac
	case $RIG_DIR in
	*[[:space:]\'\"\\]*) die "NBSHIP_RIG_DIR must not contain spaces or quotes: '$RIG_DIR'" ;;
	/ | /tmp | /tmp/* | /var/tmp | /var/tmp/*)
		die "NBSHIP_RIG_DIR=$RIG_DIR: not / and not under /tmp (sshd and the netboot user need a non-world-writable path)" ;;
	esac
	RIG_DIR=${RIG_DIR%/}
}

need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

# lock takes the machine-wide rig lock unless the caller already holds it.
# fd 9 must not leak into the daemons we start: each start closes it (9>&-).
# A caller that holds the lock may have left its descriptor open in us (flock
# FILE CMD, without -o): closing our copy keeps the daemons from inheriting
# it, and the caller's own copy keeps the lock held.
lock() {
	local fd
	for fd in /proc/$$/fd/*; do
		fd=${fd##*/}
		[ "$fd" -gt 2 ] && [ "$fd" != 9 ] && [ "$(readlink "/proc/$$/fd/$fd" 2>/dev/null)" = "$LOCK" ] && eval "exec $fd>&-"
	done
	[ "${NBSHIP_RIG_LOCKED:-}" = 1 ] && return 0
	mkdir -p "${LOCK%/*}"
	exec 9>>"$LOCK"
	if ! flock -n 9; then
		note "waiting for $LOCK (another rig user holds it)"
		flock 9
	fi
}

anchor_pid() {
	local f=$RIG_DIR/$1/anchor.pid pid='' argv0=''
	[ -r "$f" ] || return 1
	read -r pid <"$f" || true
	[ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
	{ IFS= read -r -d '' argv0 <"/proc/$pid/cmdline"; } 2>/dev/null || true
	[ "$argv0" = "nbs-anchor-$1" ] || return 1
	echo "$pid"
}

host_pid() {
	case $1 in op | build | pxe) ;; *) die "unknown host '$1' (want op, build or pxe)" ;; esac
	anchor_pid "$1" || die "rig is not up (no anchor for $1); run: rig.sh up"
}

# The wrapper run after entering a host's namespaces. Entering a mount namespace
# resets the cwd to its root; nsenter --wd=. keeps a handle on the caller's cwd
# and this puts the same path back in the new namespace's terms.
# shellcheck disable=SC2016
WRAP='if [ -n "$1" ]; then HOME=$1; export HOME; fi; shift
if [ -n "${PWD:-}" ] && [ "$PWD" -ef . ]; then cd "$PWD" 2>/dev/null || :; fi
exec "$@"'

in_host() { # in_host HOST CMD... (no cwd/HOME handling; for the rig's own use)
	local pid
	pid=$(host_pid "$1")
	shift
	nsenter -t "$pid" -n -m -- "$@"
}

# ---------------------------------------------------------------- teardown --

# rig_namespaces prints the inodes ("net:[N]" / "mnt:[N]") of the rig's
# network namespaces and of the anchors' mount namespaces.
rig_namespaces() {
	local h pid nsi
	for h in "${HOSTS[@]}"; do
		if pid=$(anchor_pid "$h"); then
			readlink "/proc/$pid/ns/mnt" "/proc/$pid/ns/net" 2>/dev/null || true
		fi
		if [ -e "/run/netns/nbs-$h" ] && nsi=$(stat -L -c %i "/run/netns/nbs-$h" 2>/dev/null); then
			echo "net:[$nsi]"
		fi
	done
	if [ -e "/run/netns/$DELAY_NS" ] && nsi=$(stat -L -c %i "/run/netns/$DELAY_NS" 2>/dev/null); then
		echo "net:[$nsi]"
	fi
}

# rig_pids NSLIST lists every live process that belongs to the rig: anything in
# one of the namespaces NSLIST (from rig_namespaces), plus daemons started with
# a config under RIG_DIR and anchors (in case a namespace vanished under them).
rig_pids() {
	local nslist=$1 f pid comm
	{
		# One stat for all processes: "net:[inode] /proc/PID/ns/net".
		stat -L -c 'net:[%i] %n' /proc/[0-9]*/ns/net 2>/dev/null || true
		stat -L -c 'mnt:[%i] %n' /proc/[0-9]*/ns/mnt 2>/dev/null || true
	} | awk -v list="$nslist" 'BEGIN { n = split(list, a, "\n"); for (i = 1; i <= n; i++) if (a[i] != "") want[a[i]] = 1 }
		($1 in want) { split($2, p, "/"); print p[3] }'
	grep -l -a -F -e "$RIG_DIR/" -e nbs-anchor- /proc/[0-9]*/cmdline 2>/dev/null | while read -r f; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		comm=
		{ read -r comm <"/proc/$pid/comm"; } 2>/dev/null || true
		case $comm in
		sshd | nginx | nix-daemon | sleep | netdelay) echo "$pid" ;;
		esac
	done
}

alive() { # alive PID: exists and is not a zombie
	local st=
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
	st=${st##*) } # "pid (comm) S ..."; comm may hold spaces and parens
	st=${st%% *}
	[ -n "$st" ] && [ "$st" != Z ]
}

teardown() {
	local i pids pid left h l nslist
	nslist=$(rig_namespaces)
	for i in $(seq 1 100); do
		mapfile -t pids < <(rig_pids "$nslist" | sort -u)
		left=()
		for pid in "${pids[@]}"; do
			[ "$pid" = $$ ] && continue
			alive "$pid" && left+=("$pid")
		done
		[ ${#left[@]} -eq 0 ] && break
		kill -KILL "${left[@]}" 2>/dev/null || true
		sleep 0.02
		[ "$i" = 100 ] && note "processes still alive after teardown: ${left[*]}"
	done
	for h in "${HOSTS[@]}"; do
		if [ -e "/run/netns/nbs-$h" ]; then
			ip netns del "nbs-$h" 2>/dev/null || { umount -l "/run/netns/nbs-$h" 2>/dev/null; rm -f "/run/netns/nbs-$h"; } || true
		fi
	done
	if [ -e "/run/netns/$DELAY_NS" ]; then
		ip netns del "$DELAY_NS" 2>/dev/null || { umount -l "/run/netns/$DELAY_NS" 2>/dev/null; rm -f "/run/netns/$DELAY_NS"; } || true
	fi
	for l in "${LINKS[@]}"; do # veths left in the root namespace by a crash mid-up
		# shellcheck disable=SC2086
		set -- $l
		if [ -e "/sys/class/net/$1" ]; then ip link del "$1" 2>/dev/null || true; fi
		if [ -e "/sys/class/net/$3" ]; then ip link del "$3" 2>/dev/null || true; fi
	done
	if [ -d "$RIG_DIR" ]; then
		if [ -e "$RIG_DIR/.nbship-rig" ] || [ -z "$(ls -A "$RIG_DIR")" ]; then
			rm -rf --one-file-system "$RIG_DIR"
		else
			die "$RIG_DIR exists but was not made by rig.sh (no .nbship-rig marker); not removing it"
		fi
	fi
}

# --------------------------------------------------------------------- up --

ensure_binfmt() {
	local f=/proc/sys/fs/binfmt_misc/qemu-aarch64
	if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
	fi
	if [ "$(head -n1 "$f" 2>/dev/null)" != enabled ]; then
		update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
	fi
	[ "$(head -n1 "$f" 2>/dev/null)" = enabled ] ||
		die "binfmt qemu-aarch64 is not enabled; run scripts/deps.sh"
	grep -q '^flags:.*F' "$f" || die "binfmt qemu-aarch64 lacks the F (fix_binary) flag; arm64 programs would not run in the rig's mount namespaces"
}

ensure_user() {
	local home=$RIG_DIR/pxe/home ent
	if ! ent=$(getent passwd "$PXE_USER"); then
		useradd --system --user-group --shell /bin/sh --home-dir "$home" --no-create-home "$PXE_USER"
	elif [ "$(echo "$ent" | cut -d: -f6)" != "$home" ]; then
		usermod --home "$home" "$PXE_USER"
	fi
	# sshd with UsePAM no refuses a locked account ('!' in shadow).
	if [ "$(getent shadow "$PXE_USER" | cut -d: -f2)" != '*' ]; then
		usermod --password '*' "$PXE_USER"
	fi
}

write_nix_conf() { # write_nix_conf HOST
	local extra=
	[ "$1" = build ] && extra=$'extra-platforms = aarch64-linux\n'
	emit "$RIG_DIR/$1/etc-nix/nix.conf" <<EOF
# nix.conf of rig host $1 (rig.sh)
build-users-group =
sandbox = false
substituters =
trusted-users = root $PXE_USER
experimental-features = nix-command
fsync-metadata = false
${extra}
EOF
}

write_uname() {
	emit "$RIG_DIR/build/uname" <<'EOF'
#!/bin/sh
# uname of the rig's build host: answers like an aarch64 Debian machine.
read -r n </proc/sys/kernel/hostname
read -r r </proc/sys/kernel/osrelease
read -r v </proc/sys/kernel/version
s=Linux m=aarch64 p=aarch64 i=aarch64 o=GNU/Linux
want=
for a in "$@"; do
	case $a in
	--help) echo "Usage: uname [OPTION]..."; exit 0 ;;
	--version) echo "uname (GNU coreutils) 9.1"; exit 0 ;;
	-a | --all) want="$want s n r v m o" ;;
	--kernel-name) want="$want s" ;;
	--nodename) want="$want n" ;;
	--kernel-release) want="$want r" ;;
	--kernel-version) want="$want v" ;;
	--machine) want="$want m" ;;
	--processor) want="$want p" ;;
	--hardware-platform) want="$want i" ;;
	--operating-system) want="$want o" ;;
	--*) echo "uname: unrecognized option '$a'" >&2; exit 1 ;;
	-*)
		f=${a#-}
		while [ -n "$f" ]; do
			c=${f%"${f#?}"}
			f=${f#?}
			case $c in
			a) want="$want s n r v m o" ;;
			s | n | r | v | m | p | i | o) want="$want $c" ;;
			*) echo "uname: invalid option -- '$c'" >&2; exit 1 ;;
			esac
		done
		;;
	*) echo "uname: extra operand '$a'" >&2; exit 1 ;;
	esac
done
[ -n "$want" ] || want=s
out=
for k in s n r v m p i o; do
	case " $want " in
	*" $k "*)
		eval "val=\$$k"
		out="$out${out:+ }$val"
		;;
	esac
done
echo "$out"
EOF
	printf '#!/bin/sh\necho aarch64\n' >"$RIG_DIR/build/arch" # coreutils arch = uname -m
	chmod 0755 "$RIG_DIR/build/uname" "$RIG_DIR/build/arch"
}

write_sshd() { # write_sshd HOST (its host key is made in up)
	local d=$RIG_DIR/$1/ssh
	emit "$d/sshd_config" <<EOF
# sshd of rig host $1 (rig.sh)
Port 22
ListenAddress 0.0.0.0
HostKey $d/ssh_host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile $RIG_DIR/authorized_keys/%u
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 64:30:128
# Remote Nix commands of SSH logins go through this host's nix-daemon.
SetEnv NIX_REMOTE=daemon
Subsystem sftp internal-sftp
EOF
}

write_nginx() {
	local d=$RIG_DIR/pxe/nginx
	emit "$d/nginx.conf" <<EOF
# nginx of the rig's pxe host (rig.sh): serves pxeDir as a netboot server would.
daemon on;
master_process on;
worker_processes 1;
user www-data;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 512; }
http {
	include /etc/nginx/mime.types;
	default_type application/octet-stream;
	access_log $d/logs/access.log;
	client_body_temp_path $d/tmp/body;
	proxy_temp_path $d/tmp/proxy;
	fastcgi_temp_path $d/tmp/fastcgi;
	uwsgi_temp_path $d/tmp/uwsgi;
	scgi_temp_path $d/tmp/scgi;
	sendfile on;
	tcp_nopush on;
	server {
		listen 80 default_server;
		server_name _;
		root $RIG_DIR/pxe/netboot;
		autoindex off;
		disable_symlinks off;
		location / { try_files \$uri =404; }
	}
}
EOF
}

# write_known_hosts records both hosts' current keys, by alias and by address.
write_known_hosts() {
	local kh=$RIG_DIR/op/home/.ssh/known_hosts
	{
		echo "builder,$BUILD_ADDR $(cut -d' ' -f1-2 "$RIG_DIR/build/ssh/ssh_host_ed25519_key.pub")"
		echo "pxe,$PXE_ADDR,$PXE_DIRECT_ADDR $(cut -d' ' -f1-2 "$RIG_DIR/pxe/ssh/ssh_host_ed25519_key.pub")"
	} >"$kh.tmp"
	mv "$kh.tmp" "$kh"
}

write_operator() {
	local s=$RIG_DIR/op/home/.ssh pub
	read -r pub <"$s/id_ed25519.pub"
	echo "$pub" >"$RIG_DIR/authorized_keys/root"
	echo "$pub" >"$RIG_DIR/authorized_keys/$PXE_USER"
	write_known_hosts
	emit "$s/config" <<EOF
# The operator's ssh config (rig.sh). OpenSSH only reads this with -F; see RIG_SSH_OPTS.
Host builder
	HostName $BUILD_ADDR
	User root
	IdentityFile $s/id_ed25519

Host pxe
	HostName $PXE_ADDR
	User $PXE_USER
	IdentityFile $s/id_ed25519

Host *
	IdentityFile $s/id_ed25519
	IdentitiesOnly yes
	UserKnownHostsFile $s/known_hosts
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	BatchMode yes
	ConnectTimeout 5
EOF
	# The real users' file format, values space-aligned.
	emit "$RIG_DIR/op/builders.conf" <<EOF
buildHost       root@builder
pxeHost         $PXE_USER@pxe
pxeDir          $RIG_DIR/pxe/netboot/
opensslServer   $PXE_DIRECT_ADDR
opensslPort     61616
EOF
}

# _anchor HOST runs inside the host's fresh network+mount namespaces: it makes
# the host's private mounts, then becomes the sleeping process that holds them.
anchor_main() {
	local h=$1
	mount --bind "$RIG_DIR/$h/nix" /nix
	mount --bind "$RIG_DIR/$h/etc-nix" /etc/nix
	case $h in
	build)
		mount --bind "$RIG_DIR/build/uname" /usr/bin/uname
		if [ -e /usr/bin/arch ]; then mount --bind "$RIG_DIR/build/arch" /usr/bin/arch; fi
		mount --bind "$RIG_DIR/build/root" /root
		;;
	pxe)
		mount --bind "$RIG_DIR/pxe/root" /root
		;;
	esac
	echo $$ >"$RIG_DIR/$h/anchor.pid.tmp"
	mv "$RIG_DIR/$h/anchor.pid.tmp" "$RIG_DIR/$h/anchor.pid"
	exec -a "nbs-anchor-$h" sleep infinity
}

wait_for() { # wait_for TRIES DESCRIPTION CMD...
	local tries=$1 what=$2 i
	shift 2
	for ((i = 0; i < tries; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	"$@" >&2 || true
	die "timed out waiting for $what"
}

op_ssh() { # op_ssh HOSTALIAS CMD...
	local opts
	read -r -a opts <<<"$(ssh_opts)"
	in_host op ssh "${opts[@]}" -o ConnectTimeout=2 "$@"
}

ssh_opts() {
	echo "-F $RIG_DIR/op/home/.ssh/config -o UserKnownHostsFile=$RIG_DIR/op/home/.ssh/known_hosts"
}

http_ok() { # any HTTP answer at all
	local code
	code=$(in_host op curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1") || return 1
	[ "$code" != 000 ]
}

# Daemons get a clean environment (not the caller's, which may be a test's)
# and no inherited descriptors that outlive startup: a caller reading rig.sh's
# output through a pipe must see EOF when rig.sh exits. (sshd and nginx keep
# stderr only until they have daemonized, so their config errors show.)
CLEANENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

start_sshd() { # start_sshd HOST
	in_host "$1" "${CLEANENV[@]}" /usr/sbin/sshd -f "$RIG_DIR/$1/ssh/sshd_config" \
		-E "$RIG_DIR/$1/ssh/sshd.log" </dev/null >/dev/null 9>&-
}

start_nix_daemon() { # start_nix_daemon HOST
	local pid
	pid=$(host_pid "$1")
	nsenter -t "$pid" -n -m -- "${CLEANENV[@]}" setsid nix-daemon \
		</dev/null >>"$RIG_DIR/$1/nix-daemon.log" 2>&1 9>&- &
}

start_nginx() {
	local d=$RIG_DIR/pxe/nginx
	in_host pxe "${CLEANENV[@]}" /usr/sbin/nginx -p "$d/" -c "$d/nginx.conf" -e "$d/logs/error.log" \
		</dev/null >/dev/null 9>&-
}

up() {
	need_root
	lock
	teardown
	ensure_binfmt
	command -v nix-daemon >/dev/null || die "nix-daemon not found; run scripts/deps.sh"
	[ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd not found; run scripts/deps.sh"
	[ -x /usr/sbin/nginx ] || die "/usr/sbin/nginx not found; run scripts/deps.sh"
	umask 022 # the state dir must be traversable by netboot and nginx's www-data
	mkdir -p /run/sshd /nix /etc/nix
	chmod 0755 /run/sshd

	# The marker first: teardown removes only a state dir that carries it.
	mkdir -p "$RIG_DIR"
	: >"$RIG_DIR/.nbship-rig"
	local h d dirs=() pu=$RIG_DIR/pxe/nix/var/nix
	for h in "${HOSTS[@]}"; do
		dirs+=("$RIG_DIR/$h/nix/store" "$RIG_DIR/$h/etc-nix")
		for d in db gcroots profiles temproots userpool daemon-socket; do
			dirs+=("$RIG_DIR/$h/nix/var/nix/$d")
		done
	done
	mkdir -p "${dirs[@]}" "$pu/profiles/per-user/$PXE_USER" "$pu/gcroots/per-user/$PXE_USER" \
		"$RIG_DIR/pxe/home" "$RIG_DIR/pxe/netboot" "$RIG_DIR/pxe/nginx/tmp" "$RIG_DIR/pxe/nginx/logs" \
		"$RIG_DIR/build/ssh" "$RIG_DIR/pxe/ssh" "$RIG_DIR/authorized_keys" "$RIG_DIR/op/home"
	mkdir -m 0700 "$RIG_DIR/build/root" "$RIG_DIR/pxe/root" "$RIG_DIR/op/home/.ssh"
	ssh-keygen -q -t ed25519 -N '' -C nbs-build-host -f "$RIG_DIR/build/ssh/ssh_host_ed25519_key" &
	ssh-keygen -q -t ed25519 -N '' -C nbs-pxe-host -f "$RIG_DIR/pxe/ssh/ssh_host_ed25519_key" &
	ssh-keygen -q -t ed25519 -N '' -C nbs-operator -f "$RIG_DIR/op/home/.ssh/id_ed25519" &
	ensure_user
	chown "$PXE_USER:" "$RIG_DIR/pxe/home" "$RIG_DIR/pxe/netboot" \
		"$pu/profiles/per-user/$PXE_USER" "$pu/gcroots/per-user/$PXE_USER"
	for h in "${HOSTS[@]}"; do write_nix_conf "$h"; done
	write_uname
	write_sshd build
	write_sshd pxe
	write_nginx
	wait # for the keys
	write_operator

	# Namespaces and links: one ip process for the machine, one per namespace.
	local l root_batch=''
	local -A batch=()
	for h in "${HOSTS[@]}"; do
		root_batch+="netns add nbs-$h"$'\n'
		batch[$h]="link set lo up"$'\n'
	done
	for l in "${LINKS[@]}"; do
		# shellcheck disable=SC2086
		set -- $l
		root_batch+="link add name $1 netns nbs-$2 type veth peer name $3 netns nbs-$4"$'\n'
		batch[$2]+="addr add $5 dev $1"$'\n'"link set $1 up"$'\n'
		batch[$4]+="addr add $6 dev $3"$'\n'"link set $3 up"$'\n'
	done
	ip -b - <<<"$root_batch"
	for h in "${HOSTS[@]}"; do
		ip -n "nbs-$h" -b - <<<"${batch[$h]}"
	done

	# Anchors: one long-lived process per host holding its mount namespace.
	for h in "${HOSTS[@]}"; do
		"${CLEANENV[@]}" NBSHIP_RIG_DIR="$RIG_DIR" setsid ip netns exec "nbs-$h" \
			unshare --mount --propagation private -- "$SELF" _anchor "$h" \
			</dev/null >>"$RIG_DIR/$h/anchor.log" 2>&1 9>&- &
	done
	for h in "${HOSTS[@]}"; do
		wait_for 200 "anchor of $h (see $RIG_DIR/$h/anchor.log)" anchor_pid "$h"
	done

	start_nix_daemon build
	start_nix_daemon pxe
	start_sshd build
	start_sshd pxe
	start_nginx

	for h in build pxe; do
		wait_for 200 "nix-daemon on $h" test -S "$RIG_DIR/$h/nix/var/nix/daemon-socket/socket"
	done
	# A login on each host (in parallel: each takes a few hundred ms here).
	local wb wp
	wait_for 100 "sshd on build" op_ssh builder true 9>&- &
	wb=$!
	wait_for 100 "sshd on pxe" op_ssh pxe true 9>&- &
	wp=$!
	wait_for 100 "nginx on $PXE_ADDR" http_ok "http://$PXE_ADDR/"
	wait "$wb" || die "no login on build"
	wait "$wp" || die "no login on pxe"
}

down() {
	need_root
	lock
	teardown
}

# -------------------------------------------------------------- commands --

print_env() {
	local home=$RIG_DIR/op/home
	[ -e "$RIG_DIR/.nbship-rig" ] || die "no rig in $RIG_DIR (no .nbship-rig marker); run: rig.sh up"
	cat <<EOF
RIG_DIR='$RIG_DIR'
RIG_OP_HOME='$home'
RIG_CONFIG='$RIG_DIR/op/builders.conf'
RIG_BUILD_ADDR='$BUILD_ADDR'
RIG_PXE_ADDR='$PXE_ADDR'
RIG_PXE_DIRECT_ADDR='$PXE_DIRECT_ADDR'
RIG_PXE_DIR='$RIG_DIR/pxe/netboot'
RIG_HTTP_URL='http://$PXE_ADDR/'
RIG_KNOWN_HOSTS='$home/.ssh/known_hosts'
RIG_SSH_OPTS='$(ssh_opts)'
EOF
}

do_exec() {
	local h=${1:-}
	[ -n "$h" ] || die "usage: rig.sh exec HOST -- CMD..."
	shift
	[ "${1:-}" = -- ] && shift
	[ $# -gt 0 ] || die "usage: rig.sh exec HOST -- CMD..."
	local pid home=
	pid=$(host_pid "$h")
	[ "$h" = op ] && home=$RIG_DIR/op/home
	[ -d . ] || cd / # nsenter --wd=. needs a cwd that still exists
	exec nsenter -t "$pid" -n -m --wd=. -- /bin/sh -c "$WRAP" rig-exec "$home" "$@"
}

# rate_bytes RATE prints RATE (tc syntax: 100mbit, 1gbit, 500kbit, 10mbps...) in bytes/s.
rate_bytes() {
	local r=${1,,}
	[[ $r =~ ^([0-9]+(\.[0-9]+)?)([kmgt]?)(bit|bps)$ ]] || die "bad rate '$1' (want e.g. 100mbit, 1gbit, 500kbit)"
	local n=${BASH_REMATCH[1]} m=${BASH_REMATCH[3]} u=${BASH_REMATCH[4]}
	awk -v n="$n" -v m="$m" -v u="$u" 'BEGIN {
		f = 1; if (m == "k") f = 1e3; if (m == "m") f = 1e6; if (m == "g") f = 1e9; if (m == "t") f = 1e12
		b = n * f; if (u == "bit") b = b / 8
		printf "%d\n", b }'
}

shape() {
	local rate=${1:-}
	[ -n "$rate" ] || die "usage: rig.sh shape RATE|off"
	need_root
	host_pid build >/dev/null
	if [ "$rate" = off ]; then
		ip netns exec nbs-build tc qdisc del dev build-pxe root 2>/dev/null || true
		ip netns exec nbs-pxe tc qdisc del dev pxe-build root 2>/dev/null || true
		return 0
	fi
	local bps burst
	bps=$(rate_bytes "$rate")
	[ "$bps" -gt 0 ] || die "bad rate '$rate'"
	# 10 ms worth of tokens, at least 64 KiB so a full GSO segment passes.
	burst=$((bps / 100))
	[ "$burst" -ge 65536 ] || burst=65536
	ip netns exec nbs-build tc qdisc replace dev build-pxe root tbf rate "$rate" burst "$burst" latency 50ms
	ip netns exec nbs-pxe tc qdisc replace dev pxe-build root tbf rate "$rate" burst "$burst" latency 50ms
}

set_link() {
	local name=${1:-} state=${2:-} l
	case $state in up | down) ;; *) die "usage: rig.sh link build-pxe down|up" ;; esac
	need_root
	case $name in pxe-build) name=build-pxe ;; build-op) name=op-build ;; pxe-op) name=op-pxe ;; esac
	for l in "${LINKS[@]}"; do
		# shellcheck disable=SC2086
		set -- $l
		if [ "$1" = "$name" ]; then
			ip -n "nbs-$2" link set "$1" "$state"
			ip -n "nbs-$4" link set "$3" "$state"
			return 0
		fi
	done
	die "unknown link '$name' (want build-pxe, op-build or op-pxe)"
}

# ------------------------------------------------------------------ delay --

# The long link: every packet between two hosts crosses a router namespace
# ($DELAY_NS) whose program (rig/netdelay) holds it for half the round trip
# and sends at most RATE per direction (netem is not in this kernel, and
# tbf's latency is a queue limit, not a delay). Each veth pair X <-> Y of
# LINKS becomes X <-> d-X and Y <-> d-Y with the router in between; the hosts
# keep their device names and addresses, and reach the far end through a
# permanent neighbour entry naming the router's MAC (no ARP through the
# router). In the router, packets from any d-* device go (policy table
# $DELAY_TABLE) into the TUN device; what netdelay writes back comes in on
# the TUN and leaves by the /32 route of its destination.

netdelay_pid() {
	local pid='' comm=''
	[ -r "$RIG_DIR/delay/netdelay.pid" ] || return 1
	read -r pid <"$RIG_DIR/delay/netdelay.pid" || true
	[ -n "$pid" ] || return 1
	{ read -r comm <"/proc/$pid/comm"; } 2>/dev/null || return 1
	[ "$comm" = netdelay ] || return 1
	echo "$pid"
}

build_netdelay() { # build_netdelay OUT
	local go=go
	command -v go >/dev/null || go=/usr/local/go/bin/go
	command -v "$go" >/dev/null || die "go not found (rig.sh delay builds rig/netdelay with it)"
	(cd "${SELF%/*}/netdelay" && CGO_ENABLED=0 "$go" build -o "$1" .) >&2 || die "building rig/netdelay failed"
}

delay() {
	local rtt=${1:-} rate=${2:-} bits=0 l i=0 bin pid h
	[[ $rtt =~ ^[0-9]+$ ]] && [ -n "$rate" ] && [ $# -eq 2 ] ||
		die "usage: rig.sh delay RTT_MS RATE (e.g. rig.sh delay 100 100mbit; RATE 0 for no limit)"
	[ "$rate" = 0 ] || bits=$(($(rate_bytes "$rate") * 8))
	need_root
	lock
	host_pid op >/dev/null
	_undelay
	mkdir -p "$RIG_DIR/delay"
	bin=$RIG_DIR/delay/netdelay
	build_netdelay "$bin"

	local root_batch="netns add $DELAY_NS"$'\n' rbatch=$'link set lo up\n' a1 a2 m
	local -A batch=()
	for l in "${LINKS[@]}"; do
		# shellcheck disable=SC2086
		set -- $l
		i=$((i + 1))
		m=02:77:0$i
		a1=${5%/*} a2=${6%/*}
		ip -n "nbs-$2" link del "$1" 2>/dev/null || true # and its peer
		root_batch+="link add name $1 address $m:00:00:01 netns nbs-$2 type veth peer name d-$1 address $m:01:00:01 netns $DELAY_NS"$'\n'
		root_batch+="link add name $3 address $m:00:00:02 netns nbs-$4 type veth peer name d-$3 address $m:01:00:02 netns $DELAY_NS"$'\n'
		batch[$2]+="addr add $5 dev $1"$'\n'"link set $1 up"$'\n'"neigh replace $a2 lladdr $m:01:00:01 dev $1 nud permanent"$'\n'
		batch[$4]+="addr add $6 dev $3"$'\n'"link set $3 up"$'\n'"neigh replace $a1 lladdr $m:01:00:02 dev $3 nud permanent"$'\n'
		rbatch+="link set d-$1 up"$'\n'"link set d-$3 up"$'\n'
		rbatch+="route add $a1/32 dev d-$1"$'\n'"route add $a2/32 dev d-$3"$'\n'
		rbatch+="neigh replace $a1 lladdr $m:00:00:01 dev d-$1 nud permanent"$'\n'
		rbatch+="neigh replace $a2 lladdr $m:00:00:02 dev d-$3 nud permanent"$'\n'
		rbatch+="rule add iif d-$1 lookup $DELAY_TABLE"$'\n'"rule add iif d-$3 lookup $DELAY_TABLE"$'\n'
	done
	ip -b - <<<"$root_batch"
	ip netns exec "$DELAY_NS" sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
		net.ipv4.conf.default.rp_filter=0 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0 >/dev/null
	ip -n "$DELAY_NS" -b - <<<"$rbatch"
	for h in "${HOSTS[@]}"; do
		ip -n "nbs-$h" -b - <<<"${batch[$h]}"
	done

	"${CLEANENV[@]}" setsid ip netns exec "$DELAY_NS" "$bin" -dev "$DELAY_TUN" -delay "$((rtt * 500))us" -rate "$bits" \
		</dev/null >"$RIG_DIR/delay/netdelay.log" 2>&1 9>&- &
	pid=$!
	echo "$pid" >"$RIG_DIR/delay/netdelay.pid"
	wait_for 200 "netdelay's TUN device (see $RIG_DIR/delay/netdelay.log)" ip -n "$DELAY_NS" link show "$DELAY_TUN"
	netdelay_pid >/dev/null || die "netdelay is not running (see $RIG_DIR/delay/netdelay.log)"
	ip netns exec "$DELAY_NS" sysctl -q -w "net.ipv4.conf.$DELAY_TUN.rp_filter=0" >/dev/null
	ip -n "$DELAY_NS" -b - <<-EOF
		link set $DELAY_TUN txqueuelen 10000 up
		route add default dev $DELAY_TUN table $DELAY_TABLE
	EOF
}

# _undelay: direct veth pairs again, as up makes them (the caller holds the lock).
_undelay() {
	[ -e "/run/netns/$DELAY_NS" ] || return 0
	local pid l i h root_batch=''
	local -A batch=()
	if pid=$(netdelay_pid); then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.02; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	for l in "${LINKS[@]}"; do
		# shellcheck disable=SC2086
		set -- $l
		ip -n "nbs-$2" link del "$1" 2>/dev/null || true
		ip -n "nbs-$4" link del "$3" 2>/dev/null || true
		root_batch+="link add name $1 netns nbs-$2 type veth peer name $3 netns nbs-$4"$'\n'
		batch[$2]+="addr add $5 dev $1"$'\n'"link set $1 up"$'\n'
		batch[$4]+="addr add $6 dev $3"$'\n'"link set $3 up"$'\n'
	done
	ip netns del "$DELAY_NS"
	ip -b - <<<"$root_batch"
	for h in "${HOSTS[@]}"; do
		ip -n "nbs-$h" -b - <<<"${batch[$h]}"
	done
}

undelay() {
	need_root
	lock
	_undelay
}

rekey() {
	local h=${1:-} d pid old i
	case $h in build | pxe) ;; *) die "usage: rig.sh rekey build|pxe" ;; esac
	need_root
	lock
	host_pid "$h" >/dev/null
	d=$RIG_DIR/$h/ssh
	if [ -r "$d/sshd.pid" ]; then
		pid=$(<"$d/sshd.pid")
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.02; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	old=$(cut -d' ' -f2 "$d/ssh_host_ed25519_key.pub")
	rm -f "$d/ssh_host_ed25519_key" "$d/ssh_host_ed25519_key.pub"
	ssh-keygen -q -t ed25519 -N '' -C "nbs-$h-host" -f "$d/ssh_host_ed25519_key"
	start_sshd "$h"
	local addr=$BUILD_ADDR
	[ "$h" = pxe ] && addr=$PXE_ADDR
	# Wait until the new sshd answers with the new key.
	for ((i = 0; i < 100; i++)); do
		if in_host op ssh-keyscan -T 1 -t ed25519 "$addr" 2>/dev/null | grep -q "$(cut -d' ' -f2 "$d/ssh_host_ed25519_key.pub")"; then
			return 0
		fi
		sleep 0.05
	done
	die "sshd on $h did not come back with its new key (old key $old)"
}

# nixconf HOST [FILE]: see the usage at the top. Tests use it for a store
# that requires signatures of a user it does not trust, with a substituter.
nixconf() {
	local h=${1:-} extra=${2:-} pid mnt p c i left sock
	case $h in build | pxe) ;; *) die "usage: rig.sh nixconf build|pxe [FILE]" ;; esac
	[ -z "$extra" ] || [ -r "$extra" ] || die "nixconf: cannot read '$extra'"
	need_root
	lock
	pid=$(host_pid "$h")
	write_nix_conf "$h"
	if [ -n "$extra" ]; then
		cat -- "$extra" >>"$RIG_DIR/$h/etc-nix/nix.conf"
	fi
	mnt=$(readlink "/proc/$pid/ns/mnt")
	for ((i = 0; i < 100; i++)); do
		left=0
		for p in /proc/[0-9]*; do
			c=
			{ read -r c <"$p/comm"; } 2>/dev/null || continue
			[ "$c" = nix-daemon ] || continue
			[ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$mnt" ] || continue
			alive "${p#/proc/}" || continue
			kill -KILL "${p#/proc/}" 2>/dev/null || true
			left=1
		done
		[ "$left" = 0 ] && break
		sleep 0.02
	done
	[ "$left" = 0 ] || die "nix-daemon on $h did not stop"
	sock=$RIG_DIR/$h/nix/var/nix/daemon-socket/socket
	rm -f "$sock"
	start_nix_daemon "$h"
	wait_for 200 "nix-daemon on $h" test -S "$sock"
}

main() {
	check_dir
	local cmd=${1:-}
	[ $# -gt 0 ] && shift
	case $cmd in
	up) up ;;
	down) down ;;
	exec) do_exec "$@" ;;
	env) print_env ;;
	shape) shape "$@" ;;
	link) set_link "$@" ;;
	delay) delay "$@" ;;
	undelay) undelay ;;
	rekey) rekey "$@" ;;
	trust)
		need_root
		host_pid op >/dev/null
		write_known_hosts
		;;
	nixconf) nixconf "$@" ;;
	_anchor) anchor_main "$@" ;;
	*) die "usage: rig.sh up|down|exec HOST -- CMD...|env|shape RATE|off|link build-pxe down|up|delay RTT_MS RATE|undelay|rekey HOST|trust|nixconf HOST [FILE]" ;;
	esac
}

main "$@"
