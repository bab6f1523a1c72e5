#!/usr/bin/env bash
# vmtest: run the e2e suite (internal/e2e) on a matrix of Debian cloud kernels,
# each booted in QEMU (TCG: there is no KVM here) with the test binary as /init.
#
#   VMTEST_KERNELS="5.10 6.1 6.12"  kernels to run (default: all three)
#   VMTEST_RUN=<regexp>              passed to the suite as -test.run
#   VMTEST_JOBS=N                    VMs run at once (default: one per CPU; each VM is one TCG thread)
#   VMTEST_TIMEOUT=S                 seconds per kernel (default 900)
#   VMTEST_SHORT=0                   run the suite without -test.short (the default is
#                                    -test.short: emulated loopback manages only ~300-600
#                                    connections/s, too few for the full-size load tests)
#   VMTEST_BINARY=PATH               use this static test binary instead of building one
#   VMTEST_APPEND="..."              extra kernel parameters (e.g. loglevel=7 for backtraces)
#   VMTEST_ACCEL=...                 QEMU accelerator (default tcg,thread=single; see below)
#   VMTEST_DROP_HOOKS=K1,K2          the drop hook kinds every kernel is tested on, first
#                                    expected (default: each kernel's, see drop_hooks below;
#                                    .ci/vmtest-selfcheck.sh sets one a kernel lacks)
#
# Kernels come from Debian's archive through apt (so apt checks their
# signatures) and are cached in .cache/vmtest/. The guest side, which mounts
# the file systems, runs the suite and prints the result marker, is vmInit in
# internal/e2e/vminit_test.go.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$top/.cache/vmtest
kernels=${VMTEST_KERNELS:-5.10 6.1 6.12}
run=${VMTEST_RUN:-}
jobs=${VMTEST_JOBS:-$(nproc)}
# Emulated, two guests at a time on two CPUs, the suite took 330-545 s per
# kernel: the limit catches hangs, not slow days.
timeout_s=${VMTEST_TIMEOUT:-900}
short=${VMTEST_SHORT:-1}
extra_append=${VMTEST_APPEND:-}
# Single-threaded TCG: with multi-threaded TCG (QEMU 7.2) the 5.10 guest hung in
# about one run of three, a vCPU spinning at a code-patched jump in
# syscall_exit_to_user_mode (soft lockup) after the tracer attached. The suite
# is no slower this way, and two VMs then fit the two cores.
accel=${VMTEST_ACCEL:-tcg,thread=single}
binary=${VMTEST_BINARY:-}
marker=TCPTRACE-VMTEST-RESULT:
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf '%s\n' "vmtest: $*" >&2; }
die() { log "$*"; exit 1; }

mkdir -p "$cache/debs" "$cache/apt"

# --- tools -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "needs root (apt, and kernels are fetched with apt-get)"
export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq >/dev/null || log "warning: apt-get update failed; using the lists as they are"
missing=()
for p in qemu-system-x86 busybox-static cpio gzip; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]}"
	# No recommends: the VMs have no NIC (-nic none), so no ROMs or GUI are needed.
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- kernels -----------------------------------------------------------------

# The Debian mirror this machine's apt uses, from one-line .list files or
# deb822 .sources files: the first "deb" URI serving a non-security suite.
debian_mirror() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
			awk '$1 == "deb" && $3 !~ /-security$/ && $2 !~ /security/ { print $2 }'
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		awk 'BEGIN { RS = ""; FS = "\n" }
		{
			delete v; key = ""
			for (i = 1; i <= NF; i++) {
				if ($i ~ /^#/) continue
				if ($i ~ /^[ \t]/ && key != "") { v[key] = v[key] " " $i; continue }
				key = tolower($i); sub(/:.*/, "", key)
				val = $i; sub(/^[^:]*:[ \t]*/, "", val); v[key] = val
			}
			if (tolower(v["enabled"]) == "no" || v["types"] !~ /(^|[ \t])deb([ \t]|$)/) next
			n = split(v["suites"], s, /[ \t]+/); ok = 0
			for (i = 1; i <= n; i++) if (s[i] != "" && s[i] !~ /-security$/) ok = 1
			split(v["uris"], u, /[ \t]+/)
			if (ok && u[1] !~ /security/) print u[1]
		}' "$f"
	done
}
mirror=$(debian_mirror | head -n1)
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"

# Private apt state for suites the machine's own sources lack (bullseye;
# bookworm-backports if needed): its own sources list and lists directory, so
# the machine's apt configuration is left untouched. $1 names it, the rest are
# suites on the machine's mirror.
private_apt_opts=()
private_apt() {
	local dir=$cache/apt/$1 s
	shift
	mkdir -p "$dir/lists/partial" "$dir/cache"
	: >"$dir/sources.list"
	for s in "$@"; do
		echo "deb [signed-by=$keyring] $mirror $s main" >>"$dir/sources.list"
	done
	private_apt_opts=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Acquire::Languages=none)
	apt-get "${private_apt_opts[@]}" update -qq >/dev/null ||
		log "warning: apt-get update for $* failed; using the lists as they are"
}

# Newest package whose name matches the regexp and that has a version to
# download; apt options (for a private list) come first. Prints "name version".
newest_kernel() {
	local re=${*: -1} name ver
	local opts=("${@:1:$#-1}")
	for name in $(apt-cache "${opts[@]}" search --names-only "$re" | awk '{print $1}' | sort -rV); do
		ver=$(apt-cache "${opts[@]}" madison "$name" | awk -F' *[|] *' 'NR == 1 { print $2 }')
		[ -n "$ver" ] && { echo "$name $ver"; return 0; }
	done
	return 1
}

# fetch_kernel LABEL REGEXP [PRIVATE-SUITES...]: choose the newest matching
# package (from the machine's lists, else from a private list of the given
# suites), download it unless cached, and extract its vmlinuz to
# $cache/<release>.vmlinuz. Sets kernel_release.
declare -A kernel_release kernel_pkg
fetch_kernel() {
	local label=$1 re=$2 pick name ver deb tmp vmlinuz
	shift 2
	local opts=()
	if ! pick=$(newest_kernel "$re"); then
		[ $# -gt 0 ] || die "$label: no package matches $re"
		private_apt "$label" "$@"
		opts=("${private_apt_opts[@]}")
		pick=$(newest_kernel "${opts[@]}" "$re") || die "$label: no package matches $re in $*"
	fi
	read -r name ver <<<"$pick"
	deb=$cache/debs/${name}_${ver//:/%3a}_amd64.deb
	if [ ! -f "$deb" ]; then
		log "$label: downloading $name $ver"
		# apt-get download checks the package against the signed Release
		# file. It runs as _apt, which needs a directory it may write to.
		tmp=$(mktemp -d "$cache/download.XXXXXX")
		if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
		(cd "$tmp" && apt-get "${opts[@]}" download -qq "$name=$ver")
		mv "$tmp"/*.deb "$cache/debs/"
		rm -rf "$tmp"
		[ -f "$deb" ] || die "$label: $deb missing after apt-get download"
	fi
	vmlinuz=$cache/${name#linux-image-}.vmlinuz
	if [ ! -f "$vmlinuz" ] || [ "$deb" -nt "$vmlinuz" ]; then
		tmp=$(mktemp -d "$cache/extract.XXXXXX")
		dpkg-deb -x "$deb" "$tmp"
		mv "$tmp"/boot/vmlinuz-* "$vmlinuz"
		rm -rf "$tmp"
	fi
	kernel_release[$label]=${name#linux-image-}
	kernel_pkg[$label]="$name $ver"
}

for k in $kernels; do
	case $k in
	5.10) fetch_kernel 5.10 '^linux-image-5\.10\.0-[0-9]+-cloud-amd64$' bullseye ;;
	6.1) fetch_kernel 6.1 '^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' bookworm ;;
	# 6.12 is in bookworm(-security) since 12.11; before that only in backports.
	6.12) fetch_kernel 6.12 '^linux-image-6\.12\.[0-9]+(\+[a-z0-9]+)?-cloud-amd64$' bookworm bookworm-backports ;;
	*) die "unknown kernel '$k' in VMTEST_KERNELS (known: 5.10 6.1 6.12)" ;;
	esac
	log "$k: ${kernel_pkg[$k]}"
done

# --- test binary and initramfs -----------------------------------------------
if [ -z "$binary" ]; then
	binary=$cache/e2e.test
	log "building $binary"
	(cd "$top" && CGO_ENABLED=0 go test -c -o "$binary" ./internal/e2e)
fi
[ -x "$binary" ] || die "no test binary at $binary"

# One initramfs serves every kernel: nothing in it is kernel-specific (no
# modules). The test binary is /init; busybox gives the tests sh, ip, ...
initrd=$cache/initramfs.gz
root=$(mktemp -d "$cache/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
	[ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
cp "$binary" "$root/init"
(cd "$root" && find . -mindepth 1 -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$initrd"

# --- boot --------------------------------------------------------------------
# panic=-1 with -no-reboot: a kernel panic, or PID 1 exiting, ends QEMU at once;
# softlockup_panic=1 turns a guest hang into such a panic (with backtrace).
append="console=ttyS0 quiet panic=-1 softlockup_panic=1"
# The suite's own timeout fires first, so a hang ends with a goroutine dump.
append+=" tcptrace.timeout=$((timeout_s > 120 ? timeout_s - 60 : timeout_s / 2))s"
[ "$short" = 0 ] || append+=" tcptrace.short=true"
if [ -n "$run" ]; then
	case $run in *'"'*) die "VMTEST_RUN cannot contain a double quote (kernel command line)" ;; esac
	append+=" tcptrace.run=\"$run\""
fi
[ -z "$extra_append" ] || append+=" $extra_append"

# The hook kinds each kernel offers for per-packet drops, best first (the
# drop tests assert the first is tcptrace's own pick and force the others; see
# dropHookRuns in internal/e2e). Passed to the guest's environment.
# 6.1's tcp_v4_syn_recv_sock takes 7 arguments, more than its x86 BPF
# trampolines take (fentry attach: "not supported"), so it falls back to kprobes.
# 6.12 also has tp_btf/consume_skb with its caller (6.3+) for the SYNs.
declare -A drop_hooks=([5.10]=fentry,kprobe [6.1]=kprobe [6.12]=fentry,kprobe,tp_btf)

# boot LABEL: run one VM and write "RESULT SECONDS" to $cache/<release>.result.
boot() {
	local label=$1 rel=${kernel_release[$1]}
	local logf=$cache/$rel.log res=$cache/$rel.result start rc=0 line result
	start=$(date +%s)
	log "$label: booting $rel"
	# A kernel parameter NAME=VALUE without a dot reaches init's environment.
	timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel "$accel" -cpu max -m 1024 -smp 2 \
		-nographic -no-reboot -nic none \
		-kernel "$cache/$rel.vmlinuz" -initrd "$initrd" \
		-append "$append TCPTRACE_DROP_HOOKS=${VMTEST_DROP_HOOKS:-${drop_hooks[$label]}}" \
		</dev/null >"$logf" 2>&1 || rc=$?
	line=$(tr -d '\r' <"$logf" | grep -a -o -E "$marker (PASS|FAIL code=-?[0-9]+)" | tail -n1 || true)
	case $line in
	"$marker PASS") result=PASS ;;
	"$marker FAIL"*) result="FAIL(${line#"$marker FAIL "})" ;;
	*) if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then result=TIMEOUT
	elif grep -aq 'Kernel panic' "$logf"; then result=KERNEL-PANIC
	else result="NO-MARKER(qemu=$rc)"; fi ;;
	esac
	echo "$result $(($(date +%s) - start))" >"$res"
	log "$label: $result in $(($(date +%s) - start)) s"
}

# Background jobs ignore SIGINT in a script: on ^C or TERM, stop their
# timeout processes (each passes the TERM on to its QEMU) and give up.
# shellcheck disable=SC2317 # called from the trap
stop_vms() {
	local j
	for j in $(jobs -p); do pkill -TERM -P "$j" 2>/dev/null || true; done
	exit 130
}
trap stop_vms INT TERM

rm -f "$cache"/*.result
for k in $kernels; do
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
	boot "$k" &
done
wait

# --- report ------------------------------------------------------------------
result_of() { { read -r result secs <"$cache/$1.result"; } 2>/dev/null || { result=NO-RESULT secs=-; }; }
failed=0
for k in $kernels; do
	rel=${kernel_release[$k]}
	result_of "$rel"
	[ "$result" = PASS ] && continue
	failed=1
	echo
	echo "=== $rel: $result; last 60 lines of $cache/$rel.log:"
	tr -d '\r' <"$cache/$rel.log" | tail -n 60
	if ! grep -aq 'TCPTRACE-VMTEST-INIT:' "$cache/$rel.log"; then
		echo "=== vmInit never ran: is TestMain calling vmInit when os.Getpid() == 1?"
	fi
done

echo
printf '%-6s %-28s %-30s %-22s %s\n' kernel release "package version" result seconds
for k in $kernels; do
	rel=${kernel_release[$k]}
	result_of "$rel"
	read -r _ ver <<<"${kernel_pkg[$k]}"
	printf '%-6s %-28s %-30s %-22s %s\n' "$k" "$rel" "$ver" "$result" "$secs"
done
exit $failed
