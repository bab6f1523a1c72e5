#!/usr/bin/env bash
# tcptrace at scale, beside the usual tools (the second half of `make bench`).
#
# A: a loopback storm of short connections (cmd/tcpstorm), untraced and then
#    under tcptrace (JSON to a file, text to /dev/null), libbpf-tools
#    tcpstates and a bpftrace printf script, and the floor under them all (the
#    least a tracer can be on the hook: tcpstorm floor). Ground truth: 10 state changes
#    per connection + 2 per storm, cross-checked by a bpftrace count(). One
#    table: rate kept, events delivered, lost, runs the kernel skipped,
#    tracer CPU per million events, peak RSS, event age (tcptrace -v); then
#    the cost of each of tcptrace's BPF programs (kernel.bpf_stats_enabled);
#    last, tcptrace and a bpftrace count() through the same storms, which
#    tells a change the tracepoint never reported from one tcptrace missed.
# B: 100,000 sockets in CLOSE_WAIT over several processes; times
#    `tcptrace closewait --once` beside `ss -tanp state close-wait`.
#
# Needs root. Every workload runs in its own network namespace, so nothing
# else on the host counts in it. Knobs (environment):
#   BENCH_CONNS (20000) BENCH_CLIENTS (8) BENCH_ROUNDS (3 storms per tracer)
#   BENCH_PORT (7777) BENCH_LEAK_SOCKETS (100000) BENCH_LEAK_PROCS (6)
#   BENCH_PARTS ("storm closewait") BENCH_BPF_STATS (1: the per-program pass)
#   BENCH_CROSSCHECK (1: tcptrace beside a bpftrace count(), whose misses are whose)
#   BENCH_KEEP=1 keeps the work directory and the tracers' output.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
GO=${GO:-go}

CONNS=${BENCH_CONNS:-20000}
CLIENTS=${BENCH_CLIENTS:-8}
ROUNDS=${BENCH_ROUNDS:-3}
PORT=${BENCH_PORT:-7777}
LEAK_SOCKETS=${BENCH_LEAK_SOCKETS:-100000}
LEAK_PROCS=${BENCH_LEAK_PROCS:-6}
LEAK_PORT=7000
PARTS=${BENCH_PARTS:-storm closewait}
NCPU=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

die() { echo "bench.sh: $*" >&2; exit 1; }
say() { echo "bench.sh: $*" >&2; }
[[ $EUID -eq 0 ]] || die "needs root (BPF, network namespaces)"

# --- dependencies: Debian packages, installed only when missing -------------
pkgs=(libbpf-tools bpftrace bpftool iproute2 time procps util-linux)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	say "installing: ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
TCPSTATES=$(command -v tcpstates || command -v libbpf-tcpstates || echo /usr/sbin/tcpstates)
[[ -x $TCPSTATES ]] || die "libbpf-tools tcpstates not found"

# --- work directory, and cleanup of everything this script starts ----------
W=$(mktemp -d /tmp/tcptrace-bench.XXXXXX)
BG=()              # background processes still running, stopped at exit
MOUNTED_TRACEFS=0  # we mounted tracefs: unmount it at exit
ORPHANS_SAVED=     # tcp_max_orphans before we raised it
STATS_SAVED=       # kernel.bpf_stats_enabled before we set it
cleanup() {
	local pid
	for pid in "${BG[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${BG[@]}"; do wait "$pid" 2>/dev/null || true; done
	if ((MOUNTED_TRACEFS)); then umount /sys/kernel/tracing || true; fi
	if [[ -n $ORPHANS_SAVED ]]; then sysctl -qw net.ipv4.tcp_max_orphans="$ORPHANS_SAVED" || true; fi
	if [[ -n $STATS_SAVED ]]; then sysctl -qw kernel.bpf_stats_enabled="$STATS_SAVED" || true; fi
	if [[ ${BENCH_KEEP:-0} == 1 ]]; then say "outputs kept in $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E # say where it failed, rather than stop in silence
trap 'say "failed at line $LINENO: $BASH_COMMAND"' ERR
forget() { # forget PID: it has been waited for
	local keep=() pid
	for pid in "${BG[@]}"; do [[ $pid == "$1" ]] || keep+=("$pid"); done
	BG=("${keep[@]}")
}

say "building tcptrace and tcpstorm in $W"
"$GO" build -o "$W/tcptrace" ./cmd/tcptrace
"$GO" build -o "$W/tcpstorm" ./cmd/tcpstorm

# --- helpers ------------------------------------------------------------------
# Share of all CPUs busy over one second: others' load skews every rate here.
cpu_busy() {
	local a b
	a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
	local total=0 idle i
	for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
	idle=$((b[4] - a[4] + b[5] - a[5]))
	echo $((100 * (total - idle) / (total > 0 ? total : 1)))
}

# utime and stime of a process, in clock ticks (fields 14 and 15 of stat,
# counted after the command name, which may hold spaces); cpu_ticks: their sum.
stat_ticks() {
	local s
	s=$(<"/proc/$1/stat") || return 1
	s=${s##*) }
	set -- $s
	echo "${12} ${13}"
}
cpu_ticks() {
	local u s
	read -r u s < <(stat_ticks "$1") && [[ -n $s ]] || return 1
	echo $((u + s))
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# One storm in a fresh network namespace; appends its rate to RATES.
RATES=()
storm_round() {
	local out
	out=$("$W/tcpstorm" storm -netns -clients "$CLIENTS" -conns "$CONNS" -addr "127.0.0.1:$PORT")
	echo "$1: $out" >>"$W/storms.log"
	[[ $out =~ rate=([0-9]+) ]] || die "storm: unexpected output: $out"
	RATES+=("${BASH_REMATCH[1]}")
	[[ $out =~ retrans=0\  ]] || say "warning: $1: packets were lost and retransmitted, the rate is not CPU-bound ($out)"
	sleep 1 # let the namespace's teardown finish outside the next round
}
storms() { # storms NAME: ROUNDS storms
	local r
	RATES=()
	for ((r = 0; r < ROUNDS; r++)); do storm_round "$1"; done
}

# start_tracer NAME READY CMD...: runs CMD under GNU time (CPU and peak RSS of
# the whole run), stdout to W/NAME.out (or $OUT), stderr to W/NAME.err. Sets TPID (the
# tracer) and TIMEPID. READY says how to tell it is attached: "tcptrace" (its
# start line), or "perf" (a tracepoint perf event besides one per CPU for the
# perf buffer: how tcpstates and bpftrace attach).
start_tracer() {
	local name=$1 ready=$2 i
	shift 2
	/usr/bin/time -f '%U %S %M' -o "$W/$name.time" "$@" >"${OUT:-$W/$name.out}" 2>"$W/$name.err" &
	TIMEPID=$!
	BG+=("$TIMEPID")
	TPID=
	for ((i = 0; i < 100; i++)); do
		TPID=$(ps -o pid= --ppid "$TIMEPID" | tr -d ' ') || true
		[[ -z $TPID ]] || break
		sleep 0.05
	done
	[[ -n $TPID ]] || die "$name did not start"
	BG=("$TPID" "${BG[@]}")
	for ((i = 0; i < 600; i++)); do
		kill -0 "$TPID" 2>/dev/null || { cat "$W/$name.err" >&2; die "$name exited early"; }
		case $ready in
		tcptrace) grep -q "tracing TCP state changes" "$W/$name.err" && break ;;
		floor) grep -q "^floor: attached" "${OUT:-$W/$name.out}" && break ;;
		perf) (($(ls -l "/proc/$TPID/fd" 2>/dev/null | grep -c perf_event || true) > NCPU)) && break ;;
		esac
		sleep 0.1
	done
	((i < 600)) || die "$name never became ready"
	sleep 0.5
	# Start-up (BPF load, bpftrace's compile) is not the storm's cost.
	local u s
	read -r u s < <(stat_ticks "$TPID") || die "$name: no /proc/$TPID/stat"
	BASE_TICKS=$((u + s)) BASE_SYS_TICKS=$s
}

# BPF programs a process holds (their IDs, from its descriptors' fdinfo).
prog_ids() { grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -un || true; }

# Runs of a process's BPF programs that the kernel skipped: a program is not
# re-entered on a CPU where it is already running (a softirq interrupting it),
# nor, for classic tracepoints, while any such program runs there. Those
# events are gone without a trace in any ring or perf buffer.
# tcptrace's *_push and *_catch state programs are left out: a skipped run of
# theirs loses nothing (see state_catch in bpf/tcptrace.c); what its state
# program skipped and the catch program recorded is subtracted in counts_tcptrace.
prog_misses() {
	local id n=0 m line
	for id in $(prog_ids "$1"); do
		line=$(bpftool prog show id "$id" 2>/dev/null | sed -n 1p)
		[[ $line =~ \ name\ state_[a-z]+_(push|catch)\  ]] && continue
		m=$(sed -n 's/.* recursion_misses \([0-9]*\).*/\1/p' <<<"$line")
		n=$((n + ${m:-0}))
	done
	echo "$n"
}

# stop_tracer: once the tracer has caught up (its CPU time stops growing),
# SIGINT, and wait for it. Sets CPU (seconds spent from the storms to exit),
# RSS_MB (peak) and MISSED (runs the kernel skipped).
stop_tracer() {
	local last=-1 now stable=0 i
	for ((i = 0; i < 80 && stable < 2; i++)); do
		now=$(cpu_ticks "$TPID") || break
		if ((now - last <= 1)); then stable=$((stable + 1)); else stable=0; fi
		last=$now
		sleep 0.25
	done
	MISSED=$(prog_misses "$TPID")
	kill -INT "$TPID" 2>/dev/null || true
	local rc=0
	wait "$TIMEPID" || rc=$?
	forget "$TPID"
	forget "$TIMEPID"
	((rc == 0)) || say "warning: $1 exited with status $rc: $(tail -1 "$W/$1.err")"
	local u s m
	# GNU time puts "Command exited with non-zero status N" first, if so.
	read -r u s m < <(tail -1 "$W/$1.time") || die "$1: no resource usage: $(tail -3 "$W/$1.err")"
	CPU=$(awk -v u="$u" -v s="$s" -v b="$BASE_TICKS" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", u + s - b / hz}')
	CPU_SYS=$(awk -v s="$s" -v b="$BASE_SYS_TICKS" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", s - b / hz}')
	RSS_MB=$(awk -v m="$m" 'BEGIN {printf "%.1f", m / 1024}')
}

# Per tracer: how many of the storm's state changes it wrote (its port, local
# or remote), everything it wrote (all ports: the host's other traffic too),
# and what it reported lost. Each sets EV, ALL and LOST for run $1.
declare -A RATE SPAN EV ALL LOST GAPS SKIP CPUS CPUS_SYS RSS AGE50 AGE99 OUT_MB DD_SYS

# write_cost NAME: what writing NAME's output alone costs this machine: dd
# copies it (from the page cache) to a new file in 64 KiB writes, as tcptrace writes.
# The page cache's fresh pages cost more in some VMs (the host backs them on
# first touch) than the tracer's formatting: the JSON run's CPU says little
# without it.
write_cost() {
	local f=$W/$1.out t=$W/$1.dd
	OUT_MB[$1]=$(du -m "$f" | cut -f1)
	if /usr/bin/time -f '%S' -o "$t" dd if="$f" of="$W/dd.out" bs=64k 2>/dev/null; then
		DD_SYS[$1]=$(tail -1 "$t")
	fi
	rm -f "$W/dd.out" "$t"
}
counts_tcptrace() { # -o json to W/NAME.out, or text to /dev/null; the exit summary on stderr
	local f=$W/$1.out err=$W/$1.err
	# State records only: drop records (other TCP drops) may name the port too.
	if [[ -f $f ]]; then EV[$1]=$(grep -cE "^\{\"type\":\"state\".*\"(lport|rport)\":$PORT," "$f" || true); else EV[$1]="-"; fi
	if [[ -f $f && ${EV[$1]} != "$TRUTH" ]]; then # which changes went missing?
		say "$1: the storm's state changes it wrote, by transition (each should be $((ROUNDS * CONNS))):"
		grep -E "^\{\"type\":\"state\".*\"(lport|rport)\":$PORT," "$f" | grep -o '"old_state":"[A-Z_0-9]*","new_state":"[A-Z_0-9]*"' |
			sort | uniq -c >&2 || true
	fi
	ALL[$1]=$(sed -n 's/^tcptrace: \([0-9]*\) events, .*/\1/p' "$err")
	LOST[$1]=$(sed -n 's/^tcptrace: [0-9]* events, \([0-9]*\) lost.*/\1/p' "$err")
	# Sockets whose history skips a change no program saw (all ports traced).
	GAPS[$1]=$(sed -n 's/^tcptrace: .* lost, \([0-9]*\) sockets with gaps.*/\1/p' "$err")
	AGE50[$1]=$(sed -n 's/.*event age at write: p50 <= \([^,]*\),.*/\1/p' "$err")
	AGE99[$1]=$(sed -n 's/.*event age at write: .*p99 <= \([^,]*\),.*/\1/p' "$err")
	# Skipped state changes its catch program recorded were delivered, not skipped.
	local caught
	caught=$(sed -n 's/.*nested state changes: [0-9]* skipped by the kernel, \([0-9]*\) of them.*/\1/p' "$err")
	SKIP[$1]=$((${SKIP[$1]:-0} - ${caught:-0}))
}
counts_tcpstates() { # SKADDR PID COMM LADDR LPORT RADDR RPORT OLD -> NEW MS: fields counted from the end
	EV[$1]=$(awk -v p="$PORT" '$(NF-2) == "->" && ($(NF-6) == p || $(NF-4) == p) {n++} END {print n+0}' "$W/$1.out")
	ALL[$1]=$(awk '$(NF-2) == "->" && $1 != "SKADDR" {n++} END {print n+0}' "$W/$1.out")
	LOST[$1]=$(sum_lost "$W/$1.out" "$W/$1.err")
}
counts_bpftrace() { # PID LADDR:LPORT RADDR:RPORT OLD NEW COMM
	EV[$1]=$(awk -v p="$PORT" '$2 ~ ":"p"$" || $3 ~ ":"p"$" {n++} END {print n+0}' "$W/$1.out")
	ALL[$1]=$(awk '$2 ~ /:[0-9]+$/ {n++} END {print n+0}' "$W/$1.out")
	LOST[$1]=$(sum_lost "$W/$1.out" "$W/$1.err")
}
counts_floor() { # tcpstorm floor: records read at exit (record mode; all ports)
	EV[$1]="-" LOST[$1]="-"
	ALL[$1]=$(sed -n 's/^floor: records=\([0-9]*\)/\1/p' "$W/$1.out")
	[[ $1 == floor-record ]] || ALL[$1]="-"
}
counts_truth() { # bpftrace count() of the storm's port: @n at exit
	EV[$1]=$(sed -n 's/^@n: \([0-9]*\)/\1/p' "$W/$1.out")
	ALL[$1]="-" LOST[$1]="-"
}
sum_lost() { grep -ohiE 'lost [0-9]+ events' "$@" | awk '{n += $2} END {print n+0}'; }

# traced NAME READY COUNTS CMD...: ROUNDS storms under a tracer, then its figures.
traced() {
	local name=$1 ready=$2 counts=$3
	shift 3
	say "$name"
	start_tracer "$name" "$ready" "$@"
	storms "$name"
	stop_tracer "$name"
	RATE[$name]=$(median "${RATES[@]}") SPAN[$name]=$(span "${RATES[@]}")
	CPUS[$name]=$CPU CPUS_SYS[$name]=$CPU_SYS RSS[$name]=$RSS_MB SKIP[$name]=$MISSED
	"$counts" "$name"
	if [[ -f $W/$name.out ]]; then write_cost "$name"; fi
	if [[ ${BENCH_KEEP:-0} != 1 ]]; then rm -f "$W/$name.out"; fi # up to ~100 MB each
}

# --- part A: connection storm --------------------------------------------------
row() { printf '%-26s %7s %13s %5s %17s %6s %7s %8s %6s %8s %6s  %s\n' "$@"; }
span() { printf '%s\n' "$@" | sort -n | sed -n '1p;$p' | paste -sd-; }
per_m() { awk -v c="$1" -v n="$2" 'BEGIN {x = "-"; if (n > 0) x = sprintf("%.2f", c / (n / 1e6)); print x}'; }

part_storm() {
	local truth=$((ROUNDS * (10 * CONNS + 2)))
	TRUTH=$truth
	say "part A: $ROUNDS storms of $CONNS connections ($CLIENTS clients) per run; background CPU busy: $(cpu_busy)%"
	# Someone else's tracer on the same hooks slows every run, and its programs
	# can make ours skip runs: worth knowing before reading the table.
	local others
	others=$(bpftool prog show 2>/dev/null | grep -cE '^[0-9]+: (tracing|raw_tracepoint|tracepoint|kprobe|perf_event) ' || true)
	((others == 0)) || say "warning: $others tracing BPF programs are already loaded (another tracer or test?): they cost every run"
	local st
	st=$(stat -f -c %T /sys/kernel/tracing 2>/dev/null || true)
	if [[ $st != tracefs ]]; then # tcpstates and bpftrace need it
		mount -t tracefs tracefs /sys/kernel/tracing
		MOUNTED_TRACEFS=1
	fi

	# The untraced rate drifts on a shared VM (by a third over minutes): each
	# tracer's share is taken against untraced storms just before and after it.
	local all_base=() prev_base=() label_n=0
	untraced_block() { # storms with no tracer; sets prev_base
		say "untraced"
		storms "untraced-$label_n"
		label_n=$((label_n + 1))
		prev_base=("${RATES[@]}")
		all_base+=("${RATES[@]}")
	}
	declare -gA BASE
	traced_between() { # traced_between NAME READY COUNTS CMD...: then an untraced block
		local before=("${prev_base[@]}")
		traced "$@"
		untraced_block
		BASE[$1]=$(median "${before[@]}" "${prev_base[@]}")
	}
	untraced_block
	traced_between truth perf counts_truth bpftrace -e "tracepoint:sock:inet_sock_set_state
		/args->sport == $PORT || args->dport == $PORT/ { @n = count(); }"
	# Exact by construction (every connection completed, nothing retransmitted):
	# the kernel count is a cross-check, itself subject to skipped runs.
	if [[ ${EV[truth]} != "$truth" ]]; then
		say "warning: bpftrace count() saw ${EV[truth]:-?} state changes, not $truth (10 per connection + 2; it skipped ${SKIP[truth]})"
	fi
	# The floor under every tracer here: the least a tracer can be on
	# tcptrace's hook (tp_btf/inet_sock_set_state), what the hook itself
	# costs this machine's workload.
	traced_between floor-hook floor counts_floor "$W/tcpstorm" floor -mode hook
	traced_between floor-record floor counts_floor "$W/tcpstorm" floor -mode record
	traced_between tcptrace-json tcptrace counts_tcptrace "$W/tcptrace" -o json -v
	OUT=/dev/null traced_between tcptrace-text tcptrace counts_tcptrace "$W/tcptrace" -v
	traced_between tcpstates perf counts_tcpstates "$TCPSTATES"
	traced_between bpftrace perf counts_bpftrace bpftrace -e 'tracepoint:sock:inet_sock_set_state {
		printf("%d %s:%d %s:%d %d %d %s\n", pid, ntop(args->saddr), args->sport,
		       ntop(args->daddr), args->dport, args->oldstate, args->newstate, comm); }'

	local b n
	b=$(median "${all_base[@]}")
	kept() { awk -v r="${RATE[$1]}" -v b="${BASE[$1]}" 'BEGIN {printf "%.0f%%", 100 * r / b}'; }
	echo
	echo "A. Connection storm: $ROUNDS storms x $CONNS short connections per run, $CLIENTS clients, loopback,"
	echo "   each storm in a fresh netns; $truth state changes per run (10 per connection, 2 per listener)."
	echo "   kept: median storm against the median of the untraced storms just before and after the run"
	echo "   (the untraced row: all ${#all_base[@]} of them, one block before the first run and one after each);"
	echo "   conn/s: median storm; storm evs: lines for the storm's port; written: all lines (all ports,"
	echo "   the host's other traffic too); CPU: the tracer's utime+stime from the first storm to its exit,"
	echo "   per million lines written; RSS: peak (VmHWM) over its whole life; lost: as the tracer reports"
	echo "   it (buffer full); skipped: runs of its BPF programs the kernel skipped (recursion) that no other program recorded."
	echo "   floor rows (tcpstorm floor): on tcptrace's hook, tp_btf/inet_sock_set_state, a program that returns at once,"
	echo "   and one writing a 24-byte record per change to a ring buffer read every 5 ms: the least any tracer of"
	echo "   these changes costs this machine's workload (written: records read, all ports)."
	row "run" "conn/s" "(min-max)" "kept" "storm evs/truth" "lost" "skipped" "written" "CPU s" "CPU-s/M" "RSS MB" "event age p50/p99"
	row "untraced (all blocks)" "$b" "$(span "${all_base[@]}")" "100%" "-" "-" "-" "-" "-" "-" "-" "-"
	for n in truth floor-hook floor-record tcptrace-json tcptrace-text tcpstates bpftrace; do
		local label=$n ev=${EV[$n]}/$truth age=-
		case $n in
		truth) label="bpftrace count() [truth]" ev="${EV[$n]}/$((ROUNDS * (10 * CONNS + 2)))" ;;
		floor-hook) label="floor: empty tp_btf prog" ev="-" ;;
		floor-record) label="floor: bare record/change" ev="-" ;;
		tcptrace-json) label="tcptrace -o json -v >file" age="${AGE50[$n]:-?} / ${AGE99[$n]:-?}" ;;
		tcptrace-text) label="tcptrace >/dev/null" ev="-" ;;
		tcpstates) label="tcpstates (libbpf-tools)" ;;
		bpftrace) label="bpftrace printf" ;;
		esac
		row "$label" "${RATE[$n]}" "${SPAN[$n]}" "$(kept "$n")" "$ev" "${LOST[$n]:-?}" "${SKIP[$n]}" "${ALL[$n]:-?}" \
			"${CPUS[$n]}" "$(per_m "${CPUS[$n]}" "${ALL[$n]}")" "${RSS[$n]}" "$age"
	done
	printf '   untraced storms around each run (median, conn/s):'
	for n in truth floor-hook floor-record tcptrace-json tcptrace-text tcpstates bpftrace; do printf ' %s %s' "$n" "${BASE[$n]}"; done
	echo
	echo
	echo "   Output to a file, and what writing those bytes alone costs here (dd copying the file to a new one):"
	for n in tcptrace-json tcpstates bpftrace; do
		[[ -n ${OUT_MB[$n]:-} ]] || continue
		printf '     %-24s %5s MB   CPU %5s s, %5s s of it system time   dd: %5s s system time\n' \
			"$n" "${OUT_MB[$n]}" "${CPUS[$n]}" "${CPUS_SYS[$n]}" "${DD_SYS[$n]:-?}"
	done
	echo

	if [[ ${BENCH_BPF_STATS:-1} == 1 ]]; then bpf_profile "$b"; fi
	if [[ ${BENCH_CROSSCHECK:-1} == 1 ]]; then crosscheck "$truth"; fi

	# The tcptrace targets (README / issue), for the JSON and the text run alike.
	local j=tcptrace-json t=tcptrace-text ok
	check "every event of the storm delivered, 0 lost (json: ${EV[$j]}/$truth, lost ${LOST[$j]:-?}, skipped ${SKIP[$j]}, sockets with gaps ${GAPS[$j]:-?}; text: lost ${LOST[$t]:-?}, skipped ${SKIP[$t]}, sockets with gaps ${GAPS[$t]:-?})" \
		$((${EV[$j]:-0} == truth && ${LOST[$j]:-1} == 0 && ${LOST[$t]:-1} == 0 && ${SKIP[$j]:-1} == 0 && ${SKIP[$t]:-1} == 0))
	ok=$(awk -v j="${RATE[$j]}" -v t="${RATE[$t]}" -v bj="${BASE[$j]}" -v bt="${BASE[$t]}" 'BEGIN {ok = j >= 0.9 * bj && t >= 0.9 * bt; print ok}')
	check "workload keeps >= 90% of its untraced rate (json $(kept "$j"), text $(kept "$t"))" "$ok"
	TARGETS+=("      (the floor on this hook here: an empty program kept $(kept floor-hook), a bare record per change $(kept floor-record))")
	local cj ct
	cj=$(per_m "${CPUS[$j]}" "${ALL[$j]}") ct=$(per_m "${CPUS[$t]}" "${ALL[$t]}")
	ok=$(awk -v a="$cj" -v b="$ct" 'BEGIN {ok = a <= 0.5 && b <= 0.5; print ok}')
	check "<= 0.5 CPU-s per million events (json $cj, text $ct)" "$ok"
	ok=$(awk -v a="${RSS[$j]}" -v b="${RSS[$t]}" 'BEGIN {ok = a <= 64 && b <= 64; print ok}')
	check "peak RSS <= 64 MB (json ${RSS[$j]}, text ${RSS[$t]})" "$ok"
	check "p99 event age <= 50 ms (json: p99 <= ${AGE99[$j]:-?}, the top of its histogram bucket)" "$(dur_le "${AGE99[$j]:-1h}" 0.05)"
	if [[ -n ${XMISS:-} ]]; then
		check "every change the tracepoint reported delivered (beside a bpftrace count(): tcptrace missed $XMISS, the tracepoint did not report $XUNREP)" \
			$((XMISS <= XUNREP))
	fi
	echo
}

# Whom a missing state change is on: tcptrace (JSON to a file) and the
# bpftrace count() run together through the same storms, so a change that
# neither saw is the tracepoint's, not tcptrace's. (On the 6.18 VM of
# 2026-12-07 the tracepoint reported nothing, to any program, for some
# orphaned client sockets' FIN_WAIT1 -> FIN_WAIT2 -> CLOSE: both tools came
# up short by the same count, which tcptrace reports as sockets with gaps.)
# $1: the storms' true number of changes. Sets XMISS and XUNREP.
crosscheck() {
	local truth=$1 bt_pid bt_time bt_base tt_ev tt_gaps bt_n bt_skip
	say "cross-check: tcptrace and a bpftrace count() together"
	start_tracer xtruth perf bpftrace -e "tracepoint:sock:inet_sock_set_state
		/args->sport == $PORT || args->dport == $PORT/ { @n = count(); }"
	bt_pid=$TPID bt_time=$TIMEPID bt_base=$BASE_TICKS
	start_tracer xcheck tcptrace "$W/tcptrace" -o json -v
	storms xcheck
	stop_tracer xcheck
	tt_ev=$(grep -cE "^\{\"type\":\"state\".*\"(lport|rport)\":$PORT," "$W/xcheck.out" || true)
	tt_gaps=$(sed -n 's/^tcptrace: .* lost, \([0-9]*\) sockets with gaps.*/\1/p' "$W/xcheck.err")
	if [[ ${BENCH_KEEP:-0} != 1 ]]; then rm -f "$W/xcheck.out"; fi
	TPID=$bt_pid TIMEPID=$bt_time BASE_TICKS=$bt_base
	stop_tracer xtruth
	bt_skip=$MISSED
	bt_n=$(sed -n 's/^@n: \([0-9]*\)/\1/p' "$W/xtruth.out")
	XMISS=$((truth - tt_ev)) XUNREP=$((truth - ${bt_n:-0} - ${bt_skip:-0}))
	echo "   Cross-check, the same $ROUNDS storms under both (${RATES[*]} conn/s): tcptrace -o json wrote $tt_ev of $truth"
	echo "   (sockets with gaps: ${tt_gaps:-?}); a bpftrace count() counted ${bt_n:-?} and skipped $bt_skip (recursion),"
	echo "   so the tracepoint reported $((${bt_n:-0} + ${bt_skip:-0})): changes it never reported to any program: $XUNREP;"
	echo "   tcptrace missed $XMISS."
	echo
}

TARGETS=()
check() { # check TEXT OK(1/0)
	if [[ $2 == 1 ]]; then TARGETS+=("PASS  $1"); else TARGETS+=("MISS  $1"); fi
}
# dur_le GO_DURATION SECONDS: 1 if the duration (e.g. 16.384ms, 1.2s, 512µs) is at most SECONDS.
dur_le() {
	awk -v d="$1" -v lim="$2" 'BEGIN {
		n = d + 0; u = d; sub(/^[0-9.]+/, "", u)
		f = (u == "s") ? 1 : (u == "ms") ? 1e-3 : (u == "µs" || u == "us") ? 1e-6 : (u == "ns") ? 1e-9 : (u == "m") ? 60 : 3600
		ok = n * f <= lim; print ok }'
}

# Where tcptrace's kernel side spends the workload's time: one more storm
# with BPF run-time statistics on (they cost a little, hence not above).
# $1: the untraced rate, to put the cost per connection in proportion.
bpf_profile() {
	STATS_SAVED=$(sysctl -n kernel.bpf_stats_enabled)
	sysctl -qw kernel.bpf_stats_enabled=1
	RATES=()
	OUT=/dev/null start_tracer bpfstats tcptrace "$W/tcptrace" -o json
	storm_round bpfstats
	local id
	for id in $(prog_ids "$TPID"); do bpftool prog show id "$id" | sed -n 1p; done >"$W/bpfstats.progs"
	stop_tracer bpfstats
	sysctl -qw kernel.bpf_stats_enabled="$STATS_SAVED"
	STATS_SAVED=
	echo "   tcptrace's BPF programs during one more storm of $CONNS (${RATES[0]} conn/s; kernel.bpf_stats_enabled=1):"
	awk -v conns="$CONNS" -v rate="$1" -v ncpu="$NCPU" '
		{ name = "?"; t = 0; c = 0; m = 0
		  for (i = 1; i < NF; i++) {
			if ($i == "name") name = $(i+1); else if ($i == "run_time_ns") t = $(i+1)
			else if ($i == "run_cnt") c = $(i+1); else if ($i == "recursion_misses") m = $(i+1) }
		  if (c == 0) next
		  printf "     %-16s %9d runs %8.0f ns/run %7d skipped %8.1f us per connection\n", name, c, t / c, m, t / conns / 1000
		  total += t }
		END { printf "     all programs: %.1f CPU-us per connection; the untraced storm uses %.1f CPU-us per connection (%d CPUs / rate)\n",
			total / conns / 1000, ncpu * 1e6 / rate, ncpu }' "$W/bpfstats.progs"
	echo
}

# --- part B: 100,000 sockets in CLOSE_WAIT ---------------------------------------
part_closewait() {
	say "part B: $LEAK_SOCKETS CLOSE_WAIT sockets over $LEAK_PROCS processes"
	# Client sockets linger as orphans (see tcpstorm leak); past this global
	# limit the kernel resets them, and their server sockets leave CLOSE_WAIT.
	local orph need=$((LEAK_SOCKETS + 16384))
	orph=$(sysctl -n net.ipv4.tcp_max_orphans)
	if ((orph < need)); then
		say "raising net.ipv4.tcp_max_orphans from $orph to $need for the run"
		ORPHANS_SAVED=$orph
		sysctl -qw net.ipv4.tcp_max_orphans="$need"
	fi
	"$W/tcpstorm" leak -procs "$LEAK_PROCS" -sockets "$LEAK_SOCKETS" -port "$LEAK_PORT" -clients "$CLIENTS" \
		>"$W/leak.out" 2>"$W/leak.err" &
	local leak=$! i
	BG+=("$leak")
	for ((i = 0; i < 1800; i++)); do
		grep -q '^ready' "$W/leak.out" && break
		kill -0 "$leak" 2>/dev/null || { cat "$W/leak.err" >&2; die "tcpstorm leak failed"; }
		sleep 0.1
	done
	grep -q '^ready' "$W/leak.out" || die "tcpstorm leak: not ready after 180 s"
	local pids first
	pids=$(sed -n 's/^ready.* pids=\([0-9,]*\).*/\1/p' "$W/leak.out")
	first=${pids%%,*}
	say "$(cat "$W/leak.out")"
	local ns=(nsenter "--net=/proc/$first/ns/net")

	local cw_t cw_m cw_sum cw_procs
	/usr/bin/time -f '%e %M' -o "$W/cw.time" "$W/tcptrace" closewait --once -o json >"$W/cw.json" 2>"$W/cw.err" ||
		{ cat "$W/cw.err" >&2; die "tcptrace closewait failed"; }
	read -r cw_t cw_m < <(tail -1 "$W/cw.time")
	read -r cw_sum cw_procs < <("$W/tcpstorm" cwsum -pids "$pids" <"$W/cw.json" | sed 's/sum=\([0-9]*\) procs=\([0-9]*\)/\1 \2/')

	local ss_t ss_m ss_n ss_owned
	/usr/bin/time -f '%e %M' -o "$W/ss.time" "${ns[@]}" ss -tanp state close-wait >"$W/ss.out"
	read -r ss_t ss_m < <(tail -1 "$W/ss.time")
	ss_n=$(($(wc -l <"$W/ss.out") - 1)) # the header
	ss_owned=$(grep -cE "pid=(${pids//,/|})," "$W/ss.out" || true)

	local ssn_t ssn_m ssn_n
	/usr/bin/time -f '%e %M' -o "$W/ssn.time" "${ns[@]}" ss -tan state close-wait >"$W/ssn.out"
	read -r ssn_t ssn_m < <(tail -1 "$W/ssn.time")
	ssn_n=$(($(wc -l <"$W/ssn.out") - 1))

	# Still all there? (A reset would have taken some out mid-measurement.)
	local after
	after=$(($("${ns[@]}" ss -tan state close-wait | wc -l) - 1))

	kill -TERM "$leak"
	wait "$leak" || true
	forget "$leak"
	if [[ -n $ORPHANS_SAVED ]]; then
		sysctl -qw net.ipv4.tcp_max_orphans="$ORPHANS_SAVED"
		ORPHANS_SAVED=
	fi

	mb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
	rowb() { printf '%-36s %7s %12s  %s\n' "$@"; }
	echo
	echo "B. CLOSE_WAIT at scale: $LEAK_SOCKETS sockets held by $LEAK_PROCS processes (pids $pids), own netns;"
	echo "   wall time and peak RSS from GNU time; $after still in CLOSE_WAIT after the measurements."
	rowb "tool" "wall s" "peak RSS MB" "CLOSE_WAIT sockets counted (want $LEAK_SOCKETS)"
	rowb "tcptrace closewait --once -o json" "$cw_t" "$(mb "$cw_m")" "${cw_sum:-?} (sum of count over ${cw_procs:-?} leaker processes)"
	rowb "ss -tanp state close-wait" "$ss_t" "$(mb "$ss_m")" "$ss_n lines, $ss_owned naming a leaker"
	rowb "ss -tan state close-wait (no -p)" "$ssn_t" "$(mb "$ssn_m")" "$ssn_n lines (no owners)"
	echo
	check "closewait --once < 2 s and < 200 MB, counting all $LEAK_SOCKETS (${cw_t} s, $(mb "$cw_m") MB, ${cw_sum:-?})" \
		"$(awk -v t="$cw_t" -v m="$cw_m" -v n="${cw_sum:-0}" -v want="$LEAK_SOCKETS" -v a="$after" \
			'BEGIN {ok = t < 2 && m < 200 * 1024 && n == want && a == want; print ok}')"
}

for part in $PARTS; do
	case $part in
	storm) part_storm ;;
	closewait) part_closewait ;;
	*) die "unknown BENCH_PARTS entry $part (want storm, closewait)" ;;
	esac
done
if ((${#TARGETS[@]})); then
	echo "tcptrace targets on this machine ($NCPU CPUs, $(uname -r)):"
	printf '  %s\n' "${TARGETS[@]}"
fi
