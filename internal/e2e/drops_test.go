package e2e

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
)

// netstat reads TcpExt counters in pid's network namespace: the kernel's own
// per-namespace ground truth.
func netstat(t *testing.T, pid int) map[string]uint64 {
	t.Helper()
	m, err := readCounters(fmt.Sprintf("/proc/%d/net/netstat", pid), "TcpExt:")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// nsCounters reads ns's own TcpExt counters (/proc/net/netstat) and Tcp
// counters (/proc/net/snmp) in one map; no process of ns needs to be alive.
func nsCounters(t *testing.T, ns *netNS) map[string]uint64 {
	t.Helper()
	var m map[string]uint64
	err := ns.do(func() (err error) {
		if m, err = readCounters("/proc/thread-self/net/netstat", "TcpExt:"); err != nil {
			return err
		}
		snmp, err := readCounters("/proc/thread-self/net/snmp", "Tcp:")
		for k, v := range snmp {
			m[k] = v
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// readCounters reads the counters of the lines that start with prefix (a
// line of names, then a line of values) from a file such as /proc/net/netstat.
func readCounters(path, prefix string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var names []string
	out := map[string]uint64{}
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != prefix {
			continue
		}
		if names == nil {
			names = fields[1:]
			continue
		}
		for i, v := range fields[1:] {
			n, _ := strconv.ParseUint(v, 10, 64)
			out[names[i]] = n
		}
	}
	return out, sc.Err()
}

// closeAndCount closes the listener, reads its namespace's counters, then
// stops tcptrace. Clients' retransmissions keep hitting a full queue: once the
// listener is closed (its last drops are reported as it closes) they get
// resets, which are no listen drops, so the count is final.
func closeAndCount(t *testing.T, ln *proc, tr *tracerProc) map[string]uint64 {
	t.Helper()
	ln.send("close")
	ln.expect("closed")
	after := netstat(t, ln.pid())
	tr.stopClean()
	ln.exit()
	return after
}

// kernelHasReason reports whether the running kernel's BTF knows a drop reason.
func kernelHasReason(t *testing.T, name string) bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	var e *btf.Enum
	if spec.TypeByName("skb_drop_reason", &e) != nil {
		return false
	}
	return slices.ContainsFunc(e.Values, func(v btf.EnumValue) bool { return v.Name == "SKB_DROP_REASON_"+name })
}

// dropHookRuns lists the hook kinds the drop tests run on, for the kernel
// under test. TCPTRACE_DROP_HOOKS names them (comma-separated), best first, as .ci/run and
// .ci/vmtest.sh know each kernel's: the first must be what tcptrace picks by
// itself; each later one is forced with --hook-kind, so every path the kernel
// has is exercised. Unset (a developer's machine): tcptrace's own pick, shown
// but not asserted.
func dropHookRuns() []string {
	kinds := strings.FieldsFunc(os.Getenv("TCPTRACE_DROP_HOOKS"), func(r rune) bool { return r == ',' || r == ' ' })
	if len(kinds) == 0 {
		return []string{""}
	}
	return kinds
}

// startDropTracer starts tcptrace for drops on the i-th hook kind of kinds
// and checks -v names a hook of that kind for the per-packet drops. It
// returns the hook that is active, as -v names it.
func startDropTracer(t *testing.T, kinds []string, i int, extra ...string) (*tracerProc, string) {
	t.Helper()
	args := append([]string{"--events", "drops", "-v"}, extra...)
	if i > 0 {
		args = append(args, "--hook-kind", kinds[i])
	}
	tr := startTracer(t, args...)
	active, kind := "", ""
	for _, line := range strings.Split(tr.stderrText(), "\n") {
		if h, ok := strings.CutPrefix(line, "tcptrace: hook: dropped clients: "); ok && strings.HasSuffix(h, " (active)") {
			active = strings.TrimSuffix(h, " (active)")
			kind, _, _ = strings.Cut(active, "/")
			kind, _, _ = strings.Cut(kind, "+")
		}
	}
	t.Logf("per-packet drops via %q", active)
	if kinds[i] != "" && kind != kinds[i] {
		t.Fatalf("per-packet drops: want a %s hook active:\n%s", kinds[i], tr.stderrText())
	}
	return tr, active
}

func hookRunName(kind string) string {
	if kind == "" {
		return "hook=auto"
	}
	return "hook=" + kind
}

// perPacket reports whether a drop record names its client (one packet).
func perPacket(r record) bool { return r.RAddr != "" }

// perPacketFloor is how many of n drops must come one per packet, with the
// client, on the active hook (as -v names it), and whether final ACKs are
// among them: all on fentry; on kprobes nearly all (the kernel skips a
// kprobe's program while another kprobe-type program or a BPF syscall holds
// that CPU, bpf_prog_active, and such a drop comes counted); by consume_skb,
// nearly all SYNs (a listener walk between a drop and its SYN's consume_skb
// counts it), and the final ACKs only where kfree_skb names them too; none
// where only counters and kfree_skb see them.
func perPacketFloor(active string, n uint64) (floor uint64, acks bool) {
	switch {
	case strings.HasPrefix(active, "fentry"):
		return n, true
	case strings.HasPrefix(active, "kprobe"):
		return n * 9 / 10, true
	case strings.Contains(active, "consume_skb") && strings.Contains(active, "kfree_skb"):
		return n * 9 / 10, true
	case strings.Contains(active, "consume_skb"):
		// The final ACKs' drops (a few of the accept queue's) come counted.
		return n * 4 / 5, false
	}
	return 0, false
}

// missedWave reports whether named per-packet records, short of want, fall
// short by one wave that reached no program: on the consume_skb path (a
// tracepoint), the known defect (README) can take one softirq run's
// tracepoint calls, and a wave of SYN retries (every client's, their timers
// expiring together) is processed in one. Such a wave comes counted in one
// walk: the shortfall must fit in the largest counted record, itself at most
// a wave. Misses spread over several walks (a defect of tcptrace's) still
// fail.
func missedWave(t *testing.T, active string, rs []record, named, want uint64, wave int) bool {
	t.Helper()
	if !strings.Contains(active, "consume_skb") || named >= want {
		return false
	}
	var burst uint64
	for _, r := range rs {
		if !perPacket(r) {
			burst = max(burst, r.Count)
		}
	}
	if burst > uint64(wave) || named+burst < want {
		return false
	}
	t.Logf("%d of the drops short of %d per packet came counted in one walk of %d (at most a wave of %d SYNs): "+
		"a softirq run that reached no BPF program (README: the known defect)", want-named, want, burst, wave)
	return true
}

// listenDrops keeps the drop records of listeners: other TCP drops (no queue
// figures) come too, e.g. the unread data of accepted-queue connections
// purged as the listener closes (queue_purge).
func listenDrops(rs []record) []record {
	var out []record
	for _, r := range rs {
		if r.Backlog != nil {
			out = append(out, r)
		}
	}
	return out
}

// TestDropsAcceptQueueFull: a listener with backlog 1 that never accepts,
// overflowed for a few seconds. The drop records add up exactly to the
// namespace's ListenDrops and name the listener's process. Per packet, with
// the dropped client: every SYN and final ACK where fentry or kprobes exist;
// else the SYNs by consume_skb (6.3+) and the final ACKs where kfree_skb
// reports TCP_LISTEN_OVERFLOW (6.15+). Where the kernel has that reason, also
// by kfree_skb alone (the consume_skb path left out, as where kallsyms hides
// addresses): the final ACKs.
func TestDropsAcceptQueueFull(t *testing.T) {
	needRoot(t)
	kinds := dropHookRuns()
	type run struct {
		name  string
		kinds []string // as startDropTracer takes them
		i     int
		extra []string
	}
	var runs []run
	for i, kind := range kinds {
		runs = append(runs, run{hookRunName(kind), kinds, i, nil})
	}
	if kernelHasReason(t, "TCP_LISTEN_OVERFLOW") {
		runs = append(runs, run{"hook=tp_btf/kfree_skb", []string{"", "tp_btf"}, 1, []string{"--test-without",
			"tp_btf/consume_skb (SYNs at a full queue), kfree_skb (TCP_LISTEN_OVERFLOW)"}})
	}
	for _, rn := range runs {
		t.Run(rn.name, func(t *testing.T) {
			ns := newNetNS(t)
			tr, active := startDropTracer(t, rn.kinds, rn.i, rn.extra...)
			ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7070")
			ln.expect("listening")
			before := netstat(t, ln.pid())
			ov := startRole(t, ns, "overflow", "-addr", "127.0.0.1:7070", "-n", "40")
			clients := strings.Split(ov.expect("clients"), ",")
			deferred := strings.Split(ov.expect("deferred"), ",")
			ov.expect("done")
			ov.wait()
			after := closeAndCount(t, ln, tr)

			truth := after["ListenDrops"] - before["ListenDrops"]
			var sum uint64
			var packets, acks []record
			rs := listenDrops(tr.records("drop", ns))
			for _, r := range rs {
				sum += r.Count
				if r.PID != ln.pid() || r.LPort != 7070 || r.Reason != "accept_queue_full" {
					t.Errorf("drop record %s: want pid %d, port 7070, accept_queue_full", r, ln.pid())
				}
				if !perPacket(r) {
					continue
				}
				packets = append(packets, r)
				port := strconv.Itoa(int(r.RPort))
				if slices.Contains(deferred, port) {
					acks = append(acks, r)
				}
				if r.RAddr != "127.0.0.1" || r.Count != 1 || !slices.Contains(clients, port) ||
					(r.KernelReason != nil && (*r.KernelReason != "tcp_listen_overflow" || !slices.Contains(deferred, port))) {
					t.Errorf("per-packet record %s: want one of the clients %v (final ACKs from %v)", r, clients, deferred)
				}
			}
			t.Logf("ListenDrops +%d (ListenOverflows +%d), records sum %d, %d per packet (%d final ACKs)",
				truth, after["ListenOverflows"]-before["ListenOverflows"], sum, len(packets), len(acks))
			if truth == 0 {
				t.Fatal("the workload caused no drops")
			}
			if sum != truth {
				t.Fatalf("drop records sum to %d, the kernel counted %d", sum, truth)
			}
			switch want, wantACKs := perPacketFloor(active, truth); {
			case want > 0:
				// Every drop is one SYN or one final ACK, seen as it happens.
				short := uint64(len(packets)) < want && !missedWave(t, active, rs, uint64(len(packets)), want, len(clients))
				if short || (wantACKs && len(acks) == 0) {
					t.Fatalf("%d per-packet records (%d final ACKs) for %d drops: want at least %d, ACKs included: %v",
						len(packets), len(acks), truth, want, wantACKs)
				}
			case kernelHasReason(t, "TCP_LISTEN_OVERFLOW"):
				if len(acks) == 0 {
					t.Fatal("no per-packet TCP_LISTEN_OVERFLOW record for the delayed final ACKs")
				}
			}
		})
	}
}

// TestDropsSynQueueFull: with syncookies off, a burst of handshakes that do
// not complete fills the SYN queue; the drops named syn_queue_full add up to
// the namespace's TCPReqQFullDrop, and all drops to its ListenDrops. Where
// fentry or kprobes exist, or consume_skb says its caller (6.3+), each
// dropped SYN comes with its client and its listener, also where a port has
// several: an SO_REUSEPORT pair (both must name clients) and listeners on two
// local addresses (the burst goes to the first one made); and where an IPv6
// listener takes IPv4 SYNs: bound to :: (Node.js's default) or to the
// v4-mapped address.
func TestDropsSynQueueFull(t *testing.T) {
	needRoot(t)
	kinds := dropHookRuns()
	type run struct {
		name, host string // host: the burst's destination
		i          int
		listen     []string // backlog1's arguments past the address
		others     string   // further listening addresses on the port
		burst      string   // SYNs in the burst
		listeners  int      // listeners whose dropped SYNs must name clients
		at         string   // the listener's address, if not host
	}
	var runs []run
	for i, kind := range kinds {
		runs = append(runs, run{hookRunName(kind), "127.0.0.1", i, nil, "", "20", 1, ""},
			run{hookRunName(kind) + "/reuseport", "127.0.0.1", i, []string{"-n", "2"}, "", "30", 2, ""},
			run{hookRunName(kind) + "/two-addresses", "127.0.0.1", i, nil, ",127.0.0.2:7071", "20", 1, ""})
	}
	// IPv6 on the hook tcptrace picks (the packet's addresses, the route).
	runs = append(runs, run{hookRunName(kinds[0]) + "/ipv6", "::1", 0, nil, "", "20", 1, ""})
	// IPv4 SYNs at an IPv6 listener (the packet's family, not the listener's).
	runs = append(runs, run{hookRunName(kinds[0]) + "/dual-stack", "127.0.0.1", 0, nil, "", "20", 1, "::"},
		run{hookRunName(kinds[0]) + "/v4-mapped", "127.0.0.1", 0, nil, "", "20", 1, "::ffff:127.0.0.1"})
	for _, rn := range runs {
		t.Run(rn.name, func(t *testing.T) {
			ns := newNetNS(t)
			if err := ns.sysctl("net/ipv4/tcp_syncookies", "0"); err != nil {
				t.Fatal(err)
			}
			tr, active := startDropTracer(t, kinds, rn.i)
			addr := net.JoinHostPort(rn.host, "7071")
			at := cmp.Or(rn.at, rn.host)
			laddr := netip.MustParseAddr(at).Unmap().String() // tcptrace shows v4-mapped as IPv4
			ln := startRole(t, ns, "backlog1", append([]string{"-addr", net.JoinHostPort(at, "7071") + rn.others, "-backlog", "4"}, rn.listen...)...)
			ln.expect("listening")
			before := netstat(t, ln.pid())
			b := startRole(t, ns, "synburst", "-addr", addr, "-n", rn.burst)
			clients := strings.Split(b.expect("clients"), ",")
			b.expect("done")
			b.wait()
			after := closeAndCount(t, ln, tr)

			truth := after["ListenDrops"] - before["ListenDrops"]
			truthQ := after["TCPReqQFullDrop"] - before["TCPReqQFullDrop"]
			var sum, sumQ, packetsQ uint64
			named := map[string]int{} // per-packet records by listener
			var queueFull []record
			for _, r := range listenDrops(tr.records("drop", ns)) {
				sum += r.Count
				if r.Reason == "syn_queue_full" {
					queueFull = append(queueFull, r)
					sumQ += r.Count
					if perPacket(r) {
						packetsQ++
					}
				}
				if r.PID != ln.pid() || r.LPort != 7071 {
					t.Errorf("drop record %s: want pid %d, port 7071", r, ln.pid())
				}
				if !perPacket(r) {
					continue
				}
				named[r.Sock]++
				if r.RAddr != rn.host || r.LAddr != laddr || !slices.Contains(clients, strconv.Itoa(int(r.RPort))) {
					t.Errorf("per-packet record %s: want one of the clients %v at %s, at a listener on %s", r, clients, rn.host, laddr)
				}
			}
			t.Logf("ListenDrops +%d, TCPReqQFullDrop +%d; records: %d, syn_queue_full %d (%d per packet, by listener %v)",
				truth, truthQ, sum, sumQ, packetsQ, named)
			if truthQ == 0 {
				t.Fatal("the burst did not fill the SYN queue")
			}
			if sum != truth || sumQ != truthQ {
				t.Fatalf("records: %d drops (%d syn_queue_full); the kernel counted %d (%d TCPReqQFullDrop)", sum, sumQ, truth, truthQ)
			}
			burst, _ := strconv.Atoi(rn.burst) // digits, set above
			if want, _ := perPacketFloor(active, truthQ); packetsQ < want && !missedWave(t, active, queueFull, packetsQ, want, burst) {
				t.Fatalf("%d dropped SYNs came with their client, of %d: want at least %d", packetsQ, truthQ, want)
			} else if want > 0 && len(named) != rn.listeners {
				t.Fatalf("dropped SYNs with their client came from %d listeners (%v): want %d", len(named), named, rn.listeners)
			}
		})
	}
}

// TestListenersTable: `tcptrace listeners` shows a listener with its owner,
// its full accept queue and the drops its namespace counted: by the walk
// tcptrace picks, and with raw_tp forced, by the run-on-demand walk
// (bpf_for_each_map_elem), on kernels that have it (5.13+; -v says). A SYN
// flood answered with syncookies drops nothing, but the kernel flags it: a
// second listener, whose SYN queue a burst overflowed (TCPReqQFullDoCookies
// grew), says syn_flood; the first, whose accept queue alone overflowed,
// does not.
func TestListenersTable(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	// The flood's own namespace: its clients' late ACKs and FINs keep
	// overflowing that accept queue, which the other counts must not see.
	floodNS := newNetNS(t)
	fl := startRole(t, floodNS, "backlog1", "-addr", "127.0.0.1:7074", "-backlog", "4")
	fl.expect("listening")
	cookies := netstat(t, fl.pid())["TCPReqQFullDoCookies"]
	b := startRole(t, floodNS, "synburst", "-addr", "127.0.0.1:7074", "-n", "20")
	b.expect("clients")
	b.expect("done")
	b.wait()
	if netstat(t, fl.pid())["TCPReqQFullDoCookies"] == cookies {
		t.Fatal("the burst sent no syncookies: the workload did not do what the test needs")
	}
	ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7072")
	ln.expect("listening")
	ov := startRole(t, ns, "overflow", "-addr", "127.0.0.1:7072", "-n", "10", "-deferred", "0")
	ov.expect("clients")
	ov.expect("deferred")
	exe, _ := os.Executable()
	for _, kind := range []string{"default", "raw_tp"} {
		args := []string{"listeners", "-v", "-o", "json", "--port", "7072,7074"}
		if kind != "default" {
			args = append(args, "--hook-kind", kind)
		}
		low := netstat(t, ln.pid())["ListenDrops"]
		code, stdout, stderr := runTcptrace(t, nil, exe, args...)
		high := netstat(t, ln.pid())["ListenDrops"]
		if code != 0 {
			t.Fatalf("%s: listeners: exit %d: %s", kind, code, stderr)
		}
		walk := activeHook(stderr, "listener drop counters")
		t.Logf("%s: walk %s", kind, walk)
		if kind == "raw_tp" {
			// Forced where the kernel has the helper (its function in
			// kallsyms); elsewhere nothing is forced and the walk was
			// checked above.
			if byRun := strings.HasPrefix(walk, "raw_tp/"); byRun != kernelHasSymbol(t, "bpf_for_each_map_elem") {
				t.Fatalf("raw_tp forced: walk %q, but the kernel has bpf_for_each_map_elem: %v", walk, !byRun)
			} else if !byRun {
				continue
			}
		}
		var r, f map[string]any
		var rows []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil {
				t.Fatalf("%s: %q: %v", kind, line, err)
			}
			switch uint32(m["netns"].(float64)) {
			case ns.ino:
				r = m
			case floodNS.ino:
				f = m
			default:
				continue
			}
			rows = append(rows, m)
		}
		if len(rows) != 2 || r == nil || f == nil || r["lport"] != 7072.0 || f["lport"] != 7074.0 {
			t.Fatalf("%s: rows for our namespaces: %v", kind, rows)
		}
		drops := uint64(r["drops"].(float64))
		if int(r["pid"].(float64)) != ln.pid() || r["backlog"] != 2.0 || r["max_backlog"] != 1.0 || drops < low || drops > high || low == 0 ||
			r["syn_flood"] != false {
			t.Fatalf("%s: row %v: want pid %d, backlog 2/1, drops between %d and %d, no SYN flood", kind, r, ln.pid(), low, high)
		}
		if int(f["pid"].(float64)) != fl.pid() || f["syn_flood"] != true {
			t.Fatalf("%s: row %v: want pid %d and the SYN flood the kernel flagged", kind, f, fl.pid())
		}
	}
	ov.expect("done")
	ov.wait()
	for _, l := range []*proc{ln, fl} {
		l.send("close")
		l.expect("closed")
		l.exit()
	}
}

// kernelHasSymbol reports whether /proc/kallsyms lists the kernel function name.
func kernelHasSymbol(t *testing.T, name string) bool {
	b, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == name {
			return true
		}
	}
	return false
}

// TestDropsOther: TCP drops elsewhere than at a listener come with the
// kernel's reason. A connection attempt to a port nobody listens on is
// refused, and the kernel drops the SYN as NO_SOCKET: one record, local end
// the refused port, remote end the client, no owner and no queue figures.
func TestDropsOther(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	tr := startTracer(t, "--events", "drops", "-v")
	if !kernelHasReason(t, "NO_SOCKET") {
		// Kernels before drop reasons: only tcp_drop() (no NO_SOCKET there),
		// where the kernel kept it a function; -v must say which it is.
		v := tr.stderrText()
		if !strings.Contains(v, "other TCP drops: fentry/tcp_drop (active)") &&
			!strings.Contains(v, "other TCP drops: kprobe/tcp_drop (active)") &&
			!strings.Contains(v, "other TCP drops: none not used") {
			t.Errorf("-v does not say how other TCP drops are seen:\n%s", tr.stderrText())
		}
		t.Logf("no NO_SOCKET drop reason here:\n%s", tr.stderrText())
		return
	}
	var port int
	err := ns.do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		err = syscall.Connect(fd, &syscall.SockaddrInet4{Port: 7079, Addr: [4]byte{127, 0, 0, 1}})
		if err != syscall.ECONNREFUSED {
			return fmt.Errorf("connect to a closed port: %v, want ECONNREFUSED", err)
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return err
		}
		port = sa.(*syscall.SockaddrInet4).Port
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.stopClean()
	var found []record
	for _, r := range tr.records("drop", ns) {
		if r.Reason == "no_socket" && r.LPort == 7079 {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one no_socket record for port 7079, got %v (all: %v)", found, tr.records("drop", ns))
	}
	r := found[0]
	if r.KernelReason == nil || *r.KernelReason != "no_socket" || r.LAddr != "127.0.0.1" || r.RAddr != "127.0.0.1" ||
		int(r.RPort) != port || r.Count != 1 || r.PID != 0 || r.Backlog != nil {
		t.Errorf("record %s: want no_socket 127.0.0.1:7079 <- 127.0.0.1:%d, count 1, no owner, no queues", r, port)
	}
}

// TestNoDropsInOrdinaryTraffic: short connections that all complete drop no
// packet, so the stream must carry no drop record for them. Kernels from 6.7
// name what a socket being destroyed still has queued QUEUE_PURGE (on 6.18,
// the FIN of most graceful closes: 1,715 of 2,000 such connections, before
// tcptrace left the reason out); it lost nothing, and older kernels freed
// the same as NOT_SPECIFIED.
func TestNoDropsInOrdinaryTraffic(t *testing.T) {
	needRoot(t)
	const n = 500
	ns := newNetNS(t)
	tr := startTracer(t, "--events", "drops", "-v")
	before := nsCounters(t, ns)
	w := startRole(t, ns, "storm", "-addr", "127.0.0.1:7083", "-n", strconv.Itoa(n))
	w.expect("done")
	w.wait()
	after := nsCounters(t, ns)
	tr.stopClean()
	// A retransmission (an emulated VM can be slow enough) may bring a real
	// drop, a duplicate segment: then only QUEUE_PURGE records are wrong.
	retrans := after["RetransSegs"] - before["RetransSegs"]
	var bad []record
	for _, r := range tr.records("drop", ns) {
		if retrans == 0 || r.Reason == "queue_purge" {
			bad = append(bad, r)
		}
	}
	if len(bad) != 0 {
		t.Errorf("%d drop records for %d complete connections (%d segments retransmitted), e.g. %s",
			len(bad), n, retrans, bad[0])
	}
	if _, ok := after["RetransSegs"]; !ok {
		t.Errorf("no RetransSegs in /proc/net/snmp: %v", after)
	}
}

// TestMissedWave: the allowance for a wave that reached no program takes one
// counted walk of at most a wave, on the consume_skb path only.
func TestMissedWave(t *testing.T) {
	pkt := record{RAddr: "127.0.0.1", Count: 1}
	counted := func(n uint64) record { return record{Count: n} }
	many := func(n int, r record) []record { return slices.Repeat([]record{r}, n) }
	const tp = "tp_btf/consume_skb (SYNs at a full queue)"
	for _, c := range []struct {
		name   string
		active string
		rs     []record
		want   bool
	}{
		{"one wave counted", tp, append(many(120, pkt), counted(40), counted(2)), true},
		{"spread over walks", tp, append(many(120, pkt), counted(20), counted(20), counted(2)), false},
		{"more than a wave", tp, append(many(110, pkt), counted(52)), false},
		{"not a tracepoint path", "fentry/tcp_conn_request", append(many(120, pkt), counted(40), counted(2)), false},
	} {
		var named uint64
		for _, r := range c.rs {
			if perPacket(r) {
				named++
			}
		}
		if got := missedWave(t, c.active, c.rs, named, 153, 40); got != c.want {
			t.Errorf("%s: missedWave = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestSynFloodAtClose: a listener flagged as SYN-flooded since the last
// listener walk and closed before the next still has its flag reported, at
// its close. The walk is left out here, so the close alone can report it.
func TestSynFloodAtClose(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	if err := ns.sysctl("net/ipv4/tcp_syncookies", "0"); err != nil {
		t.Fatal(err)
	}
	const feature = "listener drop counters"
	tr := startTracer(t, "--events", "drops", "--test-without", feature, "-v")
	if h := feature + ": none not used"; !strings.Contains(tr.stderrText(), h) {
		t.Fatalf("-v lacks %q:\n%s", h, tr.stderrText())
	}
	ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7078", "-backlog", "4")
	ln.expect("listening")
	before := netstat(t, ln.pid())
	b := startRole(t, ns, "synburst", "-addr", "127.0.0.1:7078", "-n", "20")
	b.expect("clients")
	b.expect("done")
	b.wait()
	if after := netstat(t, ln.pid()); after["TCPReqQFullDrop"] == before["TCPReqQFullDrop"] {
		t.Fatal("the burst did not overflow the SYN queue (TCPReqQFullDrop did not grow): the workload did not do what the test needs")
	}
	ln.send("close")
	ln.expect("closed")
	ln.exit()
	time.Sleep(100 * time.Millisecond)
	tr.stopClean()
	rs := tr.records("syn_flood", ns)
	if len(rs) != 1 {
		t.Fatalf("%d syn_flood records, want 1 (at the listener's close): %v", len(rs), rs)
	}
	if r := rs[0]; r.LPort != 7078 || r.PID != ln.pid() || r.Action != "drop" {
		t.Errorf("%+v: want port 7078, pid %d, action drop", r, ln.pid())
	}
}

// TestSynFloodRecord: the kernel's SYN-flood flag on a listener (its
// "Possible SYN flooding" warning) comes into the stream once, with the
// listener's owner and what the kernel does with the SYNs past the full
// queue: with syncookies on, a flood that drops nothing (TCPReqQFullDoCookies
// grew), "cookies"; with them off, "drop" (TCPReqQFullDrop grew). A listener
// flagged before tcptrace started is reported too, at its first walk, with
// before_start; a second burst at a flagged listener adds no record.
func TestSynFloodRecord(t *testing.T) {
	needRoot(t)
	burst := func(ns *netNS, addr string) {
		b := startRole(t, ns, "synburst", "-addr", addr, "-n", "20")
		b.expect("clients")
		b.expect("done")
		b.wait()
	}
	for _, tc := range []struct{ name, syncookies, counter, action string }{
		{"cookies", "1", "TCPReqQFullDoCookies", "cookies"},
		{"no-cookies", "0", "TCPReqQFullDrop", "drop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetNS(t)
			if err := ns.sysctl("net/ipv4/tcp_syncookies", tc.syncookies); err != nil {
				t.Fatal(err)
			}
			early := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7076", "-backlog", "4")
			early.expect("listening")
			burst(ns, "127.0.0.1:7076")

			tr := startTracer(t, "--events", "drops")
			ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7075", "-backlog", "4")
			ln.expect("listening")
			before := netstat(t, ln.pid())
			burst(ns, "127.0.0.1:7075")
			if after := netstat(t, ln.pid()); after[tc.counter] == before[tc.counter] {
				t.Fatalf("the burst did not overflow the SYN queue (%s did not grow): the workload did not do what the test needs", tc.counter)
			}
			floods := func() map[uint16][]record {
				m := map[uint16][]record{}
				for _, r := range tr.records("syn_flood", ns) {
					m[r.LPort] = append(m[r.LPort], r)
				}
				return m
			}
			deadline := time.Now().Add(waitLong)
			for len(floods()) < 2 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			burst(ns, "127.0.0.1:7075") // flagged already: nothing new
			time.Sleep(time.Second)     // four listener walks (every 250 ms)
			for _, l := range []*proc{ln, early} {
				l.send("close")
				l.expect("closed")
				l.exit()
			}
			tr.stopClean()

			got := floods()
			for _, want := range []struct {
				port   uint16
				pid    int
				before bool
			}{{7075, ln.pid(), false}, {7076, early.pid(), true}} {
				rs := got[want.port]
				if len(rs) != 1 {
					t.Errorf("port %d: %d syn_flood records, want 1: %v", want.port, len(rs), rs)
					continue
				}
				r := rs[0]
				if r.PID != want.pid || r.LAddr != "127.0.0.1" || r.Action != tc.action || r.Syncookies == nil ||
					fmt.Sprint(*r.Syncookies) != tc.syncookies || r.BeforeStart == nil || *r.BeforeStart != want.before ||
					r.MaxBacklog == nil || *r.MaxBacklog != 4 {
					t.Errorf("port %d: %+v: want pid %d, 127.0.0.1, action %s, syncookies %s, before_start %v, max_backlog 4",
						want.port, r, want.pid, tc.action, tc.syncookies, want.before)
				}
			}
			if len(got) != 2 {
				t.Errorf("syn_flood records for ports %v, want 7075 and 7076", got)
			}
		})
	}
}
