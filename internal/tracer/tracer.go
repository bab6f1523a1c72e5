// Package tracer loads tcptrace's BPF programs, attaches each feature to the
// best hook the running kernel offers, and streams decoded records.
package tracer

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/osthread"
)

// Options configure what the kernel side records. Filters set here run in
// BPF, so what they exclude never crosses the ring buffer.
type Options struct {
	// StateMask has bit n set to report changes into state n, OldStateMask
	// changes out of state n; with both 0 every change is reported.
	StateMask, OldStateMask uint32
	// ErrorsOnly reports only changes into CLOSE with an error (and within
	// the state masks).
	ErrorsOnly bool
	// Family is 0 for both, 4 or 6.
	Family int
	PIDs   []uint32
	Ports  []uint16

	// RingBytes is the ring buffer size (a power of two, at least a page).
	RingBytes uint32
	// WakeupBytes wakes the reader early once this much data waits; below it
	// the reader drains on its timer, so busy paths pay no wake-up per event.
	WakeupBytes uint32

	// EmitStates, EmitDrops, EmitRetrans and EmitResets select the record
	// kinds (--events); retransmissions and resets are hooked only when
	// asked for.
	EmitStates, EmitDrops, EmitRetrans, EmitResets bool

	// HookKind forces one kind of hook (one of HookKinds) for every feature
	// that has one, which then fails rather than fall back; empty picks the
	// best that loads.
	HookKind string
	// MountTracefs allows mounting tracefs at /sys/kernel/tracing when the
	// classic tracepoint is the only hook left and tracefs is missing.
	MountTracefs bool
	// UnseenState, for tests, makes the state programs ignore changes into
	// this state as if the kernel never ran them (0: none).
	UnseenState uint8
	// Without, for tests, names an optional feature to leave out, as on a
	// kernel that has none of its hooks, or one hook ("": none).
	Without string
}

// DefaultRingBytes holds about 80,000 state changes.
const DefaultRingBytes = 8 << 20

// Hook reports one candidate hook for one feature, for -v.
type Hook struct {
	Feature string // what the hook is for, e.g. "state changes"
	Name    string // e.g. "tp_btf/inet_sock_set_state"
	Active  bool
	Err     error // why it is not active; nil when not tried
}

func (h Hook) String() string {
	switch {
	case h.Active:
		return fmt.Sprintf("%s: %s (active)", h.Feature, h.Name)
	case h.Err != nil:
		return fmt.Sprintf("%s: %s not used: %v", h.Feature, h.Name, h.Err)
	default:
		return fmt.Sprintf("%s: %s not tried (a better hook is active)", h.Feature, h.Name)
	}
}

// candidate is one way to attach a feature: one or more programs, all of
// which must load and attach.
type candidate struct {
	name  string // as shown to the user
	kind  string // tp_btf, raw_tp, tracepoint, iter, fentry or kprobe
	parts []part
	// unusable, when set, says why this kernel cannot use the candidate
	// (found before loading anything).
	unusable error
}

// part is one program of a candidate and how to attach it.
type part struct {
	prog string // program name in the object
	// as names a copy of prog to load against function fn instead of the
	// function its section names (fentry/fexit are bound at load).
	as, fn string
	attach func(*ebpf.Program) (link.Link, error)
	// walk: a program run on demand (see walkRun) rather than attached,
	// its rows map (if it has one) set here once loaded.
	walk *mapWalk
	// counted: the feature's program whose skipped runs (recursion
	// misses) are changes lost unless caught (the state program).
	counted bool
	// lossy: a program whose skipped runs are records lost, with nothing
	// to catch them (the retransmission program; a nested run is rare).
	lossy bool
}

// name is the program's name once loaded.
func (p part) name() string {
	if p.as != "" {
		return p.as
	}
	return p.prog
}

func single(name, kind, prog string, attach func(*ebpf.Program) (link.Link, error)) candidate {
	return candidate{name: name, kind: kind, parts: []part{{prog: prog, attach: attach}}}
}

// caught is a state-change candidate of three programs on one hook,
// attached in this order: prog_push, the state program prog, prog_catch.
// The short ones record the changes the kernel skips prog for (a softirq
// nested in it; see state_catch in bpf/tcptrace.c). The push program is
// armed once the catch program is attached: a change that met only some of
// the three would leave its token behind for good.
func (t *Tracer) caught(name, kind, prog string, attach func(*ebpf.Program) (link.Link, error)) candidate {
	armed := func(p *ebpf.Program) (link.Link, error) {
		l, err := attach(p)
		if err != nil {
			return nil, err
		}
		if err := t.maps.Variables["nest_armed"].Set(uint8(1)); err != nil {
			l.Close()
			return nil, fmt.Errorf("set nest_armed: %w", err)
		}
		return l, nil
	}
	return candidate{name: name, kind: kind, parts: []part{
		{prog: prog + "_push", attach: attach},
		{prog: prog, attach: attach, counted: true},
		{prog: prog + "_catch", attach: armed},
	}}
}

// feature is something the tracer needs, with its hooks best first.
type feature struct {
	name     string
	required bool
	// missesAreLost: runs of this feature's counted program that the
	// kernel skips (recursion) lose records, unless caught; set for state
	// changes, whose EPERM also means BPF is refused to this user.
	missesAreLost bool
	// watchesDrops: its links close before the last listener walk (see
	// RunPolling), so that walk counts what the watched calls had under way.
	watchesDrops bool
	// degraded says what the user loses when no hook attaches (optional features).
	degraded   string
	candidates []candidate
}

func rawTracepoint(name string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) {
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: p})
	}
}

func tpBTF(p *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: p})
}

// kernelHas reports whether the kernel's BTF has a function of this name
// (one that was not inlined away, so fentry and kprobes can reach it).
func (t *Tracer) kernelHas(fn string) bool {
	var f *btf.Func
	return t.kernel != nil && t.kernel.TypeByName(fn, &f) == nil
}

// kernelHasStruct reports whether the kernel's BTF has a struct of this name.
func (t *Tracer) kernelHasStruct(name string) bool {
	var s *btf.Struct
	return t.kernel != nil && t.kernel.TypeByName(name, &s) == nil
}

// tracepointArgs is how many arguments the kernel's tracepoint name passes
// (its btf_trace_ typedef), -1 when its BTF does not say.
func (t *Tracer) tracepointArgs(name string) int {
	var td *btf.Typedef
	if t.kernel == nil || t.kernel.TypeByName("btf_trace_"+name, &td) != nil {
		return -1
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return -1
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(proto.Params) == 0 {
		return -1
	}
	return len(proto.Params) - 1 // the first is the tracepoint's data pointer
}

// argVariant names the program for tracepoint tp whose arguments match the
// kernel's, as its BTF says: base for two, base+suffix for three (a newer
// kernel's added argument); with an error when it says neither.
func (t *Tracer) argVariant(tp, base, suffix string) (string, error) {
	switch t.tracepointArgs(tp) {
	case 2:
		return base, nil
	case 3:
		return base + suffix, nil
	}
	return base, fmt.Errorf("the kernel's BTF has no tcp:%s tracepoint with 2 or 3 arguments", tp)
}

// acceptExitProg names accept()'s exit program: the typed walk to the new
// descriptor's socket where the kernel gives tracepoint programs
// bpf_get_current_task_btf() (5.11+) and has the bpf_rdonly_cast kfunc
// (6.2+), else the walk by probe reads.
func (t *Tracer) acceptExitProg() string {
	if t.kernelHas("bpf_rdonly_cast") && features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetCurrentTaskBtf) == nil {
		return "accept_exit_typed"
	}
	return "accept_exit_tp"
}

// synConsumed attaches syn_consumed once it knows the code range of
// tcp_rcv_state_process(), the caller whose consumed SYNs it looks at.
func (t *Tracer) synConsumed(p *ebpf.Program) (link.Link, error) {
	lo, hi, err := funcRange("tcp_rcv_state_process")
	if err != nil {
		return nil, err
	}
	for name, v := range map[string]uint64{"rcv_state_lo": lo, "rcv_state_hi": hi} {
		if err := t.maps.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	return tpBTF(p)
}

// kprobePMU is where a kernel with kprobes offers them to perf_event_open
// (which cilium/ebpf prefers over tracefs).
const kprobePMU = "/sys/bus/event_source/devices/kprobe"

func kprobe(symbol string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kprobe(symbol, p, nil) }
}

func kretprobe(symbol string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) { return link.Kretprobe(symbol, p, nil) }
}

// syscallExit attaches to the syscalls:event tracepoint. Where tracefs is
// not mounted (containers, minimal hosts) it is mounted for the attach alone,
// in a mount namespace nobody else sees (privateTracefs): the other choice,
// a program on sys_exit, costs every system call on the host ~150 ns.
func (t *Tracer) syscallExit(opts *Options, event string) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) {
		if tracefsMounted() {
			return link.Tracepoint("syscalls", event, p, nil)
		}
		if !opts.MountTracefs {
			return nil, fmt.Errorf("tracefs is not mounted at %s and --no-mount-tracefs forbids mounting it", tracefsPath)
		}
		var l link.Link
		err := privateTracefs(func() (err error) {
			l, err = link.Tracepoint("syscalls", event, p, nil)
			return err
		})
		return l, err
	}
}

// privateTracefs runs fn on a thread of its own, in a mount namespace of its
// own with tracefs mounted at tracefsPath. A tracepoint needs tracefs only to
// look up its ID when attached; a mount no other process sees cannot be left
// behind, nor unmounted under another tool. (cilium/ebpf, finding no tracefs
// in /proc/self/mountinfo, which shows the main thread's namespace, takes
// tracefsPath by its file system type, seen from this thread.)
func privateTracefs(fn func() error) error {
	var err error
	osthread.Alone(func() {
		if err = unix.Unshare(unix.CLONE_NEWNS); err != nil {
			err = fmt.Errorf("unshare a mount namespace to mount tracefs in: %w", err)
			return
		}
		// Private first, or the mount would propagate to the host's /sys.
		if err = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			err = fmt.Errorf("make / private in tcptrace's own mount namespace: %w", err)
			return
		}
		if err = unix.Mount("tracefs", tracefsPath, "tracefs", 0, ""); err != nil {
			err = fmt.Errorf("mount tracefs at %s in tcptrace's own mount namespace: %w", tracefsPath, err)
			return
		}
		err = fn()
	})
	return err
}

func (t *Tracer) features(opts *Options) ([]feature, error) {
	// The kernel skips a classic tracepoint's programs together when one
	// nests in another (bpf_prog_active): a catch program would go with
	// the state program, so there is none.
	classicStates := single("tracepoint/sock/inet_sock_set_state", "tracepoint", "state_tp", func(p *ebpf.Program) (link.Link, error) {
		if err := t.ensureTracefs(opts.MountTracefs); err != nil {
			return nil, err
		}
		return link.Tracepoint("sock", "inet_sock_set_state", p, nil)
	})
	classicStates.parts[0].counted = true
	states := feature{
		name:          "state changes",
		required:      true,
		missesAreLost: true,
		candidates: []candidate{
			t.caught("tp_btf/inet_sock_set_state", "tp_btf", "state_btf", tpBTF),
			t.caught("raw_tp/inet_sock_set_state", "raw_tp", "state_raw", rawTracepoint("inet_sock_set_state")),
			classicStates,
		},
	}
	acceptProg := t.acceptExitProg()
	sysExit := feature{
		name: "connect port, accept owner",
		degraded: "a CLOSE->SYN_SENT event waits for the socket's next state change to learn its local port, " +
			"and an accepted socket keeps its listener's owner",
		candidates: []candidate{
			// Only the system calls wanted: the programs on sys_exit below
			// run for every system call on the host.
			{name: "tracepoint/syscalls/sys_exit_accept4,sys_exit_accept,sys_exit_connect", kind: "tracepoint", parts: []part{
				{prog: acceptProg, attach: t.syscallExit(opts, "sys_exit_accept4")},
				{prog: acceptProg, attach: t.syscallExit(opts, "sys_exit_accept")},
				{prog: "connect_exit_tp", attach: t.syscallExit(opts, "sys_exit_connect")},
			}},
			single("tp_btf/sys_exit", "tp_btf", "sys_exit_btf", tpBTF),
			single("raw_tp/sys_exit", "raw_tp", "sys_exit_raw", rawTracepoint("sys_exit")),
		},
	}
	forks := feature{
		name:     "forks, execs",
		degraded: "a socket handed to a child process keeps naming its parent, and its owner's name from before exec",
		candidates: []candidate{
			{name: "tp_btf/sched_process_fork,sched_process_exec", kind: "tp_btf", parts: []part{
				{prog: "fork_btf", attach: tpBTF}, {prog: "exec_btf", attach: tpBTF}}},
			{name: "raw_tp/sched_process_fork,sched_process_exec", kind: "raw_tp", parts: []part{
				{prog: "fork_raw", attach: rawTracepoint("sched_process_fork")},
				{prog: "exec_raw", attach: rawTracepoint("sched_process_exec")}}},
		},
	}
	renames := feature{
		name:     "renames",
		degraded: "a process that renames itself keeps its old name until its socket's owner is looked up again, as does one in the moment between an exec's new name and the exec's end",
		candidates: []candidate{
			single("tp_btf/task_rename", "tp_btf", "rename_btf", tpBTF),
			single("raw_tp/task_rename", "raw_tp", "rename_raw", rawTracepoint("task_rename")),
		},
	}
	exits := feature{
		name:     "exits",
		degraded: "owner_exited is never set",
		candidates: []candidate{
			single("tp_btf/sched_process_exit", "tp_btf", "exit_btf", tpBTF),
			single("raw_tp/sched_process_exit", "raw_tp", "exit_raw", rawTracepoint("sched_process_exit")),
		},
	}
	// Per-packet drops, with the client: the listen-queue checks themselves
	// where fentry or kprobes exist, else the final-ACK overflows that
	// kfree_skb names (6.15+). The counter walk below counts every drop on
	// any path; these only name the packets behind the counts.
	const synRecvV4, synRecvV6 = "tcp_v4_syn_recv_sock", "tcp_v6_syn_recv_sock"
	var noKprobes error
	if _, err := os.Stat(kprobePMU); err != nil {
		noKprobes = fmt.Errorf("the kernel has no kprobes (%s missing: built without CONFIG_KPROBES)", kprobePMU)
	}
	drops := feature{
		name:         "dropped clients",
		watchesDrops: true,
		degraded:     "drops are counted per listener, without the client's address",
		candidates: []candidate{
			{name: "fentry+fexit/tcp_conn_request,tcp_v4_syn_recv_sock,tcp_v6_syn_recv_sock", kind: "fentry", parts: []part{
				{prog: "syn_fentry", attach: tpBTF}, {prog: "syn_fexit", attach: tpBTF},
				{prog: "ack_fentry", attach: tpBTF}, {prog: "ack_fexit", attach: tpBTF},
				{prog: "ack_fentry", as: "ack_fentry_v6", fn: synRecvV6, attach: tpBTF},
				{prog: "ack_fexit", as: "ack_fexit_v6", fn: synRecvV6, attach: tpBTF},
			}},
			{name: "kprobe+kretprobe/tcp_conn_request,tcp_v4_syn_recv_sock,tcp_v6_syn_recv_sock", kind: "kprobe", unusable: noKprobes, parts: []part{
				{prog: "syn_kprobe", attach: kprobe("tcp_conn_request")},
				{prog: "syn_kretprobe", attach: kretprobe("tcp_conn_request")},
				{prog: "ack_kprobe", attach: kprobe(synRecvV4)}, {prog: "ack_kretprobe", attach: kretprobe(synRecvV4)},
				{prog: "ack_kprobe", attach: kprobe(synRecvV6)}, {prog: "ack_kretprobe", attach: kretprobe(synRecvV6)},
			}},
		},
	}
	// Without either: the SYNs by consume_skb's caller (6.3+ passes it),
	// with the final ACKs by kfree_skb's reason where the kernel has it.
	consumed := candidate{name: "tp_btf/consume_skb (SYNs at a full queue)", kind: "tp_btf",
		parts: []part{{prog: "syn_consumed", attach: t.synConsumed}}}
	kfree := single("tp_btf/kfree_skb (TCP_LISTEN_OVERFLOW)", "tp_btf", "kfree_rx_sk", tpBTF)
	if t.reasons.listenOverflow == 0 {
		kfree.unusable = errors.New("the kernel's BTF has no SKB_DROP_REASON_TCP_LISTEN_OVERFLOW (added in 6.15)")
	} else {
		consumed.name += ", kfree_skb (TCP_LISTEN_OVERFLOW)"
		consumed.parts = append(consumed.parts, kfree.parts...)
	}
	if t.tracepointArgs("consume_skb") != 2 {
		consumed.unusable = errors.New("the kernel's consume_skb tracepoint does not say where it was called from (6.3+)")
	}
	drops.candidates = append(drops.candidates, consumed, kfree)
	// Other TCP drops, by the kernel's reason where it has them: kfree_skb
	// (reason 5.17+, rx_sk 6.11+), else tcp_drop() (up to 5.18) where the
	// kernel kept it a function of its own.
	others := feature{
		name:     "other TCP drops",
		degraded: "TCP drops other than at listeners' queues are not reported",
		candidates: []candidate{
			single("tp_btf/kfree_skb (reason, rx_sk)", "tp_btf", "other_rx_sk", tpBTF),
			single("tp_btf/kfree_skb (reason)", "tp_btf", "other_reason", tpBTF),
		},
	}
	if len(t.reasons.names) == 0 {
		for i := range others.candidates {
			others.candidates[i].unusable = errors.New("the kernel's BTF has no enum skb_drop_reason (kfree_skb has reasons since 5.17)")
		}
	}
	if t.kernelHas("tcp_drop") {
		// Offered only where the function exists, so a forced kind does not
		// fail on kernels past 5.18 for a function they no longer have.
		others.candidates = append(others.candidates,
			single("fentry/tcp_drop", "fentry", "tcp_drop_fentry", tpBTF),
			candidate{name: "kprobe/tcp_drop", kind: "kprobe", unusable: noKprobes,
				parts: []part{{prog: "tcp_drop_kprobe", attach: kprobe("tcp_drop")}}})
	} else {
		others.degraded += " (no tcp_drop() in this kernel's BTF to fall back on)"
	}
	// The two map walks: an iterator each, else (where the kernel refuses
	// map iterators, as a BPF LSM's policy can) a program that walks the
	// map with bpf_for_each_map_elem, run on demand (5.13+).
	walkByRun := features.HaveProgramHelper(ebpf.RawTracepoint, asm.FnForEachMapElem) == nil
	polls := feature{
		name:     "listener drop counters",
		degraded: "no drops are reported and `tcptrace listeners` is unavailable",
		candidates: []candidate{
			single("iter/bpf_map_elem", "iter", "poll_listeners", t.mapIter(&t.poll, "listen_drops", nil)),
		},
	}
	scan := feature{
		name:     "socket owner scan",
		degraded: "owners of sockets older than tcptrace are unknown",
		candidates: []candidate{
			single("iter/task_file", "iter", "scan_socks", func(p *ebpf.Program) (link.Link, error) {
				it, err := link.AttachIter(link.IterOptions{Program: p})
				if err == nil {
					t.iter = it
				}
				return it, err
			}),
		},
	}
	sweep := feature{
		name: "closed socket sweep",
		degraded: "a closed socket's entry in the socket table goes at its final CLOSE, and the next socket at " +
			"its address inserts its own (~180 ns more per state change in a connection storm)",
		candidates: []candidate{
			// Only once it is attached may the state program leave closed sockets' entries.
			single("iter/bpf_map_elem", "iter", "sweep_socks", t.mapIter(&t.sweep, "socks", t.keepClosed)),
		},
	}
	late := feature{
		name: "blocking connects",
		degraded: "a connect() that blocks has its SYN_SENT sent only when its handshake ends (for a peer that " +
			"never answers, once its SYNs run out)",
		candidates: []candidate{
			single("iter/bpf_map_elem", "iter", "send_held", t.mapIter(&t.late, "pending_connects", nil)),
		},
	}
	if walkByRun {
		// Kind raw_tp (its program type): forcing raw_tp tries these too.
		late.candidates = append(late.candidates, candidate{name: walkRunName + " over pending_connects", kind: "raw_tp",
			parts: []part{{prog: "send_held_run", walk: &t.late, attach: t.walkRun(&t.late, nil)}}})
		polls.candidates = append(polls.candidates, candidate{name: walkRunName + " over listen_drops", kind: "raw_tp",
			parts: []part{{prog: "poll_listeners_run", walk: &t.poll, attach: t.walkRun(&t.poll, nil)}}})
		sweep.candidates = append(sweep.candidates, candidate{name: walkRunName + " over socks", kind: "raw_tp",
			parts: []part{{prog: "sweep_socks_run", walk: &t.sweep, attach: t.walkRun(&t.sweep, t.keepClosed)}}})
	}
	// Retransmissions: the variant whose arguments match the kernel's
	// tracepoint (newer kernels add the attempt's error as a third).
	retransProg, noRetrans := t.argVariant("tcp_retransmit_skb", "retrans_btf", "_err")
	retrans := feature{
		name:     "retransmits",
		degraded: "retransmissions are not reported (a close still says how many the connection made)",
		candidates: []candidate{
			{name: "tp_btf/tcp_retransmit_skb,tcp_retransmit_synack", kind: "tp_btf", unusable: noRetrans, parts: []part{
				{prog: retransProg, attach: tpBTF, lossy: true},
				{prog: "synack_btf", attach: tpBTF, lossy: true}}},
			{name: "raw_tp/tcp_retransmit_skb,tcp_retransmit_synack", kind: "raw_tp", unusable: noRetrans, parts: []part{
				{prog: strings.Replace(retransProg, "_btf", "_raw", 1), attach: rawTracepoint("tcp_retransmit_skb"), lossy: true},
				{prog: "synack_raw", attach: rawTracepoint("tcp_retransmit_synack"), lossy: true}}},
		},
	}
	// Resets sent, by the tracepoint's variant for its arguments (newer
	// kernels pass the reason as a third). Where tcp_send_reset is an event
	// of its own (6.10+) it fires for every reset; before, it shared
	// tcp_event_sk_skb and fired only for resets a full socket sent: the
	// others (to a closed port, from a timewait or request socket) are
	// hooked at tcp_v4/v6_send_reset, by fentry or else kprobe, and where
	// neither attaches the hook's name says what is missing.
	resetProg, noResets := t.argVariant("tcp_send_reset", "reset_btf", "_reason")
	resetTP := "tcp_send_reset"
	if strings.HasSuffix(resetProg, "_reason") {
		resetTP += " (reason)"
	}
	resetBTF := part{prog: resetProg, attach: tpBTF, lossy: true}
	resets := feature{
		name:     "resets",
		degraded: "resets sent are not reported (a reset received still shows as a close with ECONNRESET)",
		candidates: []candidate{
			{name: "tp_btf/" + resetTP, kind: "tp_btf", unusable: noResets, parts: []part{resetBTF}},
			{name: "raw_tp/" + resetTP, kind: "raw_tp", unusable: noResets, parts: []part{
				{prog: strings.Replace(resetProg, "_btf", "_raw", 1), attach: rawTracepoint("tcp_send_reset"), lossy: true}}},
		},
	}
	if !t.kernelHasStruct("trace_event_raw_tcp_send_reset") {
		for i := range resets.candidates {
			resets.candidates[i].name += " (full sockets only)"
		}
		const v4, v6 = "tcp_v4_send_reset", "tcp_v6_send_reset"
		var noCalls error
		if !t.kernelHas(v4) {
			noCalls = fmt.Errorf("the kernel's BTF has no %s() to hook", v4)
		}
		calls := v4
		fentries := []part{resetBTF, {prog: "reset_call_fentry", attach: tpBTF, lossy: true}}
		kprobes := []part{resetBTF, {prog: "reset_call_kprobe", attach: kprobe(v4), lossy: true}}
		if t.kernelHas(v6) {
			calls += "," + v6
			fentries = append(fentries, part{prog: "reset_call_fentry", as: "reset_call_fentry_v6", fn: v6, attach: tpBTF, lossy: true})
			kprobes = append(kprobes, part{prog: "reset_call_kprobe", attach: kprobe(v6), lossy: true})
		}
		resets.candidates = append([]candidate{
			{name: "tp_btf/tcp_send_reset + fentry/" + calls, kind: "fentry",
				unusable: errors.Join(noResets, noCalls), parts: fentries},
			{name: "tp_btf/tcp_send_reset + kprobe/" + calls, kind: "kprobe",
				unusable: errors.Join(noResets, noCalls, noKprobes), parts: kprobes},
		}, resets.candidates...)
	}
	// The scan comes first: owners of existing sockets are recorded before
	// the state hooks start reading them. The state hooks come last: from
	// their attach on, records pile up in the ring until the reader starts,
	// and on a busy host each load after them took 50-200 ms (in a storm the
	// 500 ms they added overflowed the 8 MiB ring: 23,000 records lost).
	fs := []feature{scan, sweep, forks, renames, exits, sysExit, late, polls}
	if opts.EmitDrops {
		fs = append(fs, drops, others)
	}
	if opts.EmitRetrans {
		fs = append(fs, retrans)
	}
	if opts.EmitResets {
		fs = append(fs, resets)
	}
	fs = append(fs, states)
	if opts.HookKind != "" {
		// Force one kind wherever a feature has it (tests reach the fallbacks
		// so); a forced hook that does not attach is an error, not a fallback.
		for i := range fs {
			if kept := ofKind(fs[i].candidates, opts.HookKind); kept != nil {
				fs[i].candidates, fs[i].required = kept, true
			}
		}
	}
	if opts.Without != "" && opts.Without != CPURings && !leaveOut(fs, opts.Without) {
		return nil, fmt.Errorf("cannot leave out %q: not an optional feature or a hook here", opts.Without)
	}
	return fs, nil
}

// leaveOut marks unusable, for a test, the hooks of the optional feature
// named what, or the one hook named so (as -v names them); false if neither.
func leaveOut(fs []feature, what string) bool {
	out := errors.New("left out for a test")
	if i := slices.IndexFunc(fs, func(f feature) bool { return f.name == what }); i >= 0 {
		if fs[i].required {
			return false
		}
		for j := range fs[i].candidates {
			fs[i].candidates[j].unusable = out
		}
		return true
	}
	for i := range fs {
		for j := range fs[i].candidates {
			if fs[i].candidates[j].name == what {
				fs[i].candidates[j].unusable = out
				return true
			}
		}
	}
	return false
}

func ofKind(cs []candidate, kind string) []candidate {
	var kept []candidate
	for _, c := range cs {
		if c.kind == kind {
			kept = append(kept, c)
		}
	}
	return kept
}

// HookKinds lists the values Options.HookKind accepts.
var HookKinds = []string{"tp_btf", "raw_tp", "tracepoint", "fentry", "kprobe"}

// Tracer owns every BPF object tcptrace loaded; Close releases them all.
type Tracer struct {
	maps    *ebpf.Collection
	progs   []*ebpf.Collection
	links   []link.Link
	hooks   []Hook
	rings   []*ebpf.Map // the ring buffers records come through: one per CPU, or events
	spare   *ebpf.Map   // the last of rings, shared by the CPUs offline at the start; nil if none
	offline int         // those CPUs
	iter    *link.Iter  // the socket scan, when the kernel has task_file iterators
	mounted string      // tracefs mount point we created, unmounted on Close
	reasons *kernelReasons
	kernel  *btf.Spec // the running kernel's BTF

	poll       mapWalk // the listener walk
	sweep      mapWalk // the sweep of closed sockets' entries
	late       mapWalk // the walk of held events that no change or exit sent
	heldPerCPU []int64 // the held map's per-CPU counts, last read
	// closesPerCPU is closes_kept as last read; closesAt its sums at the
	// last two sweeps due.
	closesPerCPU []uint64
	closesAt     [2]uint64
	dropWatch    []link.Link // the per-packet drop hooks, closed before the last walk
	// stateProg is the active state-change program: the runs the kernel
	// skipped (recursion) are lost events too, but for those the catch
	// program recorded (the nesting map's caught count). Its counts start
	// at zero: each candidate's programs are loaded afresh. (A reading taken
	// once all three programs were attached missed the skips in between,
	// which the catch program recorded: more caught than skipped.)
	stateProg *ebpf.Program
	// finalMisses is its count once Detach stopped it (guarded by iterMu).
	finalMisses uint64
	// lossy are the active lossy parts (see part.lossy); lossyFinal is
	// their recursion misses once Detach stopped them (guarded by iterMu).
	lossy      []*ebpf.Program
	lossyFinal uint64
	// iterMu guards the iterators: one walk at a time (each advances the
	// drop counters), and none while Detach closes them.
	iterMu sync.Mutex
}

// ErrNoBTF means the kernel exposes no BTF (/sys/kernel/btf/vmlinux).
var ErrNoBTF = errors.New("kernel BTF not found at /sys/kernel/btf/vmlinux: tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")

// ErrPermission means the kernel refused a BPF operation for lack of privilege.
var ErrPermission = errors.New("permission denied: tcptrace needs root or CAP_BPF+CAP_PERFMON")

// New loads the BPF objects with opts and attaches every feature.
func New(opts Options) (_ *Tracer, err error) {
	// Loading makes ~4 MB of garbage per program set (CO-RE against the
	// kernel's BTF, which stays live meanwhile: 15-20 MB of heap on Debian's
	// kernels); at the default GC percent the heap grew to twice that and
	// the load's peak RSS reached 67 MB. A tighter heap goal while loading
	// costs a few more collections, once.
	defer debug.SetGCPercent(debug.SetGCPercent(loadGCPercent))
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoBTF
		}
		return nil, fmt.Errorf("read kernel BTF: %w", err)
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		if errors.Is(err, unix.EPERM) {
			return nil, ErrPermission
		}
		return nil, fmt.Errorf("kernel lacks BPF ring buffers (needs Linux 5.8 or later): %w", err)
	}

	spec, err := loadTcptrace()
	if err != nil {
		return nil, fmt.Errorf("parse embedded BPF object: %w", err)
	}
	t := &Tracer{reasons: loadKernelReasons(kernel), kernel: kernel}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := t.configure(spec, &opts); err != nil {
		return nil, err
	}

	// Maps first, shared by whichever programs end up loaded.
	mapSpec := spec.Copy()
	mapSpec.Programs = nil
	for _, name := range ownMaps {
		delete(mapSpec.Maps, name)
	}
	if t.maps, err = ebpf.NewCollection(mapSpec); err != nil {
		return nil, loadError("create BPF maps", err)
	}
	if err := t.fillFilters(&opts); err != nil {
		return nil, err
	}

	fs, err := t.features(&opts)
	if err != nil {
		return nil, err
	}
	for _, f := range fs {
		if err := t.attachFeature(spec, f); err != nil {
			return nil, err
		}
	}
	// The kernel's BTF (tens of MB of Go heap) is needed only to load: let
	// it go, so the heap a long run keeps, and grows against, is small.
	t.kernel = nil
	debug.FreeOSMemory()
	return t, nil
}

// loadGCPercent is the GC percent while New loads (see there).
const loadGCPercent = 25

// watchBusy is how long the listener walk leaves alone a listener whose
// queue check (fentry/kprobe) began at a full queue: that call's drop is
// reported by its exit. Far longer than the call takes, even under emulation.
const watchBusy = 10 * time.Millisecond

func (t *Tracer) configure(spec *ebpf.CollectionSpec, opts *Options) error {
	reasons := t.reasons
	cfg := tcptraceConfig{StateMask: opts.StateMask, OldStateMask: opts.OldStateMask, WakeupBytes: opts.WakeupBytes,
		ReasonListenOverflow: reasons.listenOverflow, ReasonNotSpecified: reasons.notSpecified,
		ReasonQueuePurge: reasons.queuePurge,
		WatchBusyNs:      uint64(watchBusy), TestUnseenState: opts.UnseenState}
	if opts.ErrorsOnly {
		cfg.ErrorsOnly = 1
	}
	if opts.EmitStates {
		cfg.EmitStates = 1
	}
	if opts.EmitDrops {
		cfg.EmitDrops = 1
	}
	switch opts.Family {
	case 0:
	case 4:
		cfg.Family = afInet
	case 6:
		cfg.Family = afInet6
	default:
		return fmt.Errorf("invalid address family %d", opts.Family)
	}
	if len(opts.PIDs) > 0 {
		cfg.FilterPids = 1
	}
	if len(opts.Ports) > 0 {
		cfg.FilterPorts = 1
	}
	if opts.RingBytes == 0 {
		opts.RingBytes = DefaultRingBytes
	}
	if wakeup := t.setupRings(spec, opts, &cfg); opts.WakeupBytes == 0 {
		cfg.WakeupBytes = wakeup
	}
	if err := spec.Variables["cfg"].Set(cfg); err != nil {
		return fmt.Errorf("set BPF config: %w", err)
	}
	return nil
}

func (t *Tracer) fillFilters(opts *Options) error {
	one := uint8(1)
	for _, pid := range opts.PIDs {
		if err := t.maps.Maps["filter_pids"].Put(pid, one); err != nil {
			return fmt.Errorf("fill BPF map filter_pids: %w", err)
		}
	}
	for _, port := range opts.Ports {
		if err := t.maps.Maps["filter_ports"].Put(port, one); err != nil {
			return fmt.Errorf("fill BPF map filter_ports: %w", err)
		}
	}
	return nil
}

// attachFeature tries f's hooks in order and keeps the first that loads and attaches.
func (t *Tracer) attachFeature(spec *ebpf.CollectionSpec, f feature) error {
	var errs []string
	for i, c := range f.candidates {
		if c.unusable != nil {
			t.hooks = append(t.hooks, Hook{Feature: f.name, Name: c.name, Err: c.unusable})
			errs = append(errs, fmt.Sprintf("%s: %v", c.name, c.unusable))
			continue
		}
		ls, coll, err := t.loadAndAttach(spec, c)
		if err == nil {
			t.links = append(t.links, ls...)
			t.progs = append(t.progs, coll)
			if f.watchesDrops {
				t.dropWatch = ls
			}
			for _, p := range c.parts {
				if p.counted {
					t.stateProg = coll.Programs[p.name()]
				}
				// A program attached twice (two kprobes) counts its misses once.
				if prog := coll.Programs[p.name()]; p.lossy && !slices.Contains(t.lossy, prog) {
					t.lossy = append(t.lossy, prog)
				}
			}
			t.hooks = append(t.hooks, Hook{Feature: f.name, Name: c.name, Active: true})
			for _, rest := range f.candidates[i+1:] {
				t.hooks = append(t.hooks, Hook{Feature: f.name, Name: rest.name})
			}
			return nil
		}
		if errors.Is(err, unix.EPERM) && !isVerifierError(err) && f.missesAreLost {
			// The first program tcptrace needs: the kernel refuses BPF to
			// this user. (Elsewhere EPERM can be one hook kind's refusal,
			// as for fentry under some lockdown setups.)
			return ErrPermission
		}
		t.hooks = append(t.hooks, Hook{Feature: f.name, Name: c.name, Err: err})
		errs = append(errs, fmt.Sprintf("%s: %v", c.name, err))
	}
	if f.required {
		return fmt.Errorf("no hook for %s could be attached (%s)", f.name, strings.Join(errs, "; "))
	}
	t.hooks = append(t.hooks, Hook{Feature: f.name, Name: "none", Err: errors.New(f.degraded)})
	return nil
}

// loadAndAttach loads only c's programs (the others are pruned from the
// spec) against the shared maps, then attaches each.
func (t *Tracer) loadAndAttach(spec *ebpf.CollectionSpec, c candidate) (_ []link.Link, _ *ebpf.Collection, err error) {
	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{}
	for _, p := range c.parts {
		ps := spec.Programs[p.prog]
		if ps == nil {
			return nil, nil, fmt.Errorf("program %s missing from the BPF object", p.prog)
		}
		ps = ps.Copy()
		if p.fn != "" {
			ps.AttachTo = p.fn
		}
		one.Programs[p.name()] = ps
	}
	// A map not shared (see ownMaps) is made only for the programs that use it.
	for name := range one.Maps {
		if _, shared := t.maps.Maps[name]; !shared && !usesMap(one.Programs, name) {
			delete(one.Maps, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: t.maps.Maps})
	if err != nil {
		return nil, nil, loadError("load", err)
	}
	var ls []link.Link
	defer func() {
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			coll.Close()
		}
	}()
	for _, p := range c.parts {
		if p.walk != nil {
			p.walk.rows = coll.Maps["listener_rows"]
		}
		l, err := p.attach(coll.Programs[p.name()])
		if err != nil {
			return nil, nil, fmt.Errorf("attach %s: %w", p.name(), err)
		}
		ls = append(ls, l)
	}
	return ls, coll, nil
}

// stateSkips is how often the kernel skipped the state program so far
// (recursion), final once Detach has run.
func (t *Tracer) stateSkips() uint64 {
	t.iterMu.Lock()
	defer t.iterMu.Unlock()
	if t.stateProg == nil {
		return t.finalMisses
	}
	return recursionMisses(t.stateProg, 0)
}

// lossySkips is how often the kernel skipped the lossy programs since they
// were attached (recursion): records lost. Final once Detach has run.
func (t *Tracer) lossySkips() uint64 {
	t.iterMu.Lock()
	defer t.iterMu.Unlock()
	if t.lossy == nil {
		return t.lossyFinal
	}
	return t.lossyMisses()
}

func (t *Tracer) lossyMisses() uint64 {
	var n uint64
	for _, p := range t.lossy {
		n += recursionMisses(p, 0)
	}
	return n
}

// recursionMisses reads how often the kernel skipped p (def if unreadable).
func recursionMisses(p *ebpf.Program, def uint64) uint64 {
	if p == nil {
		return def
	}
	s, err := p.Stats()
	if err != nil {
		return def
	}
	return s.RecursionMisses
}

func isVerifierError(err error) bool {
	var ve *ebpf.VerifierError
	return errors.As(err, &ve)
}

// loadError keeps a verifier rejection readable: its last lines, not the whole log.
func loadError(what string, err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		lines := ve.Log
		if len(lines) > 8 {
			lines = lines[len(lines)-8:]
		}
		return fmt.Errorf("%s: verifier rejected the program (%v): %s", what, ve.Cause, strings.Join(lines, " | "))
	}
	if errors.Is(err, unix.EPERM) {
		// Not memlock (memcg-accounted since 5.11), whatever the library
		// suggests: lockdown or an LSM refusing this kind of program.
		return fmt.Errorf("%s: the kernel refused it: %w", what, unix.EPERM)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Hooks reports which hook serves each feature and why others were not used.
func (t *Tracer) Hooks() []Hook { return t.hooks }

// ActiveHook returns the active hook's name for a feature, or "".
func (t *Tracer) ActiveHook(feature string) string {
	for _, h := range t.hooks {
		if h.Feature == feature && h.Active {
			return h.Name
		}
	}
	return ""
}

// Detach closes every link so the kernel stops producing records; maps stay
// readable so the ring buffer can still be drained.
func (t *Tracer) Detach() error {
	t.iterMu.Lock()
	t.iter, t.poll, t.sweep, t.late = nil, mapWalk{}, mapWalk{}, mapWalk{}
	t.iterMu.Unlock()
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links, t.dropWatch = nil, nil
	// No program runs now: the state program's count is final.
	t.iterMu.Lock()
	if t.stateProg != nil {
		t.finalMisses = recursionMisses(t.stateProg, 0)
		t.stateProg = nil
	}
	if t.lossy != nil {
		t.lossyFinal = t.lossyMisses()
		t.lossy = nil
	}
	t.iterMu.Unlock()
	for _, c := range t.progs {
		c.Close()
	}
	t.progs = nil
	return errors.Join(errs...)
}

// stopDropWatch closes the per-packet drop hooks and waits out watchBusy, so
// that the next listener walk counts every drop up to now: those whose exit
// will not run any more included.
func (t *Tracer) stopDropWatch() {
	if len(t.dropWatch) == 0 {
		return
	}
	for _, l := range t.dropWatch {
		l.Close()
		t.links = slices.DeleteFunc(t.links, func(x link.Link) bool { return x == l })
	}
	t.dropWatch = nil
	time.Sleep(watchBusy)
}

// Close detaches and releases every program, link and map.
func (t *Tracer) Close() error {
	err := t.Detach()
	t.closeRings()
	if t.maps != nil {
		t.maps.Close()
		t.maps = nil
	}
	if t.mounted != "" {
		unix.Unmount(t.mounted, 0)
		t.mounted = ""
	}
	return err
}

const tracefsPath = "/sys/kernel/tracing"

func tracefsMounted() bool {
	var st unix.Statfs_t
	return unix.Statfs(tracefsPath, &st) == nil && st.Type == unix.TRACEFS_MAGIC
}

// ensureTracefs mounts tracefs where cilium/ebpf looks for it, if allowed;
// Close unmounts what it mounted. cilium/ebpf caches the tracefs path on first
// use, so this must run before any tracefs-based attach.
func (t *Tracer) ensureTracefs(allowMount bool) error {
	if tracefsMounted() {
		return nil
	}
	if !allowMount {
		return fmt.Errorf("tracefs is not mounted at %s (mount it: mount -t tracefs tracefs %s)", tracefsPath, tracefsPath)
	}
	if err := unix.Mount("tracefs", tracefsPath, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs at %s: %w", tracefsPath, err)
	}
	t.mounted = tracefsPath
	return nil
}
