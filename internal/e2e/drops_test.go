package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// netstat reads TcpExt counters in pid's network namespace: the kernel's own
// per-namespace ground truth.
func netstat(t *testing.T, pid int) map[string]uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/netstat", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var names []string
	out := map[string]uint64{}
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
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
	return out
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
	ln.send("exit")
	ln.wait()
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

// TestDropsAcceptQueueFull: a listener with backlog 1 that never accepts,
// overflowed for a few seconds. The drop records add up exactly to the
// namespace's ListenDrops and name the listener's process; where the kernel
// reports TCP_LISTEN_OVERFLOW, the final-ACK overflows come one per packet
// with the dropped client.
func TestDropsAcceptQueueFull(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	tr := startTracer(t, "--events", "drops", "-v")
	ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7070")
	ln.expect("listening")
	before := netstat(t, ln.pid())
	ov := startRole(t, ns, "overflow", "-addr", "127.0.0.1:7070", "-n", "40")
	deferred := strings.Split(ov.expect("deferred"), ",")
	ov.expect("done")
	ov.wait()
	after := closeAndCount(t, ln, tr)

	truth := after["ListenDrops"] - before["ListenDrops"]
	var sum uint64
	var perPacket []record
	for _, r := range tr.records("drop", ns) {
		sum += r.Count
		if r.PID != ln.pid() || r.LPort != 7070 || r.Reason != "accept_queue_full" {
			t.Errorf("drop record %s: want pid %d, port 7070, accept_queue_full", r, ln.pid())
		}
		if r.KernelReason != nil {
			perPacket = append(perPacket, r)
		}
	}
	t.Logf("ListenDrops +%d (ListenOverflows +%d), records sum %d, %d per packet",
		truth, after["ListenOverflows"]-before["ListenOverflows"], sum, len(perPacket))
	if truth == 0 {
		t.Fatal("the workload caused no drops")
	}
	if sum != truth {
		t.Fatalf("drop records sum to %d, the kernel counted %d", sum, truth)
	}
	if kernelHasReason(t, "TCP_LISTEN_OVERFLOW") {
		if len(perPacket) == 0 {
			t.Fatal("no per-packet TCP_LISTEN_OVERFLOW record for the delayed final ACKs")
		}
		for _, r := range perPacket {
			if *r.KernelReason != "tcp_listen_overflow" || r.RAddr != "127.0.0.1" ||
				!slices.Contains(deferred, strconv.Itoa(int(r.RPort))) || r.Count != 1 {
				t.Errorf("per-packet record %s: want one of the delayed clients %v", r, deferred)
			}
		}
	}
}

// TestDropsSynQueueFull: with syncookies off, a burst of handshakes that do
// not complete fills the SYN queue; the drops named syn_queue_full add up to
// the namespace's TCPReqQFullDrop, and all drops to its ListenDrops.
func TestDropsSynQueueFull(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	if err := ns.sysctl("net/ipv4/tcp_syncookies", "0"); err != nil {
		t.Fatal(err)
	}
	tr := startTracer(t, "--events", "drops")
	ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7071", "-backlog", "4")
	ln.expect("listening")
	before := netstat(t, ln.pid())
	b := startRole(t, ns, "synburst", "-addr", "127.0.0.1:7071", "-n", "20")
	b.expect("done")
	b.wait()
	after := closeAndCount(t, ln, tr)

	truth := after["ListenDrops"] - before["ListenDrops"]
	truthQ := after["TCPReqQFullDrop"] - before["TCPReqQFullDrop"]
	var sum, sumQ uint64
	for _, r := range tr.records("drop", ns) {
		sum += r.Count
		if r.Reason == "syn_queue_full" {
			sumQ += r.Count
		}
		if r.PID != ln.pid() || r.LPort != 7071 {
			t.Errorf("drop record %s: want pid %d, port 7071", r, ln.pid())
		}
	}
	t.Logf("ListenDrops +%d, TCPReqQFullDrop +%d; records: %d, syn_queue_full %d", truth, truthQ, sum, sumQ)
	if truthQ == 0 {
		t.Fatal("the burst did not fill the SYN queue")
	}
	if sum != truth || sumQ != truthQ {
		t.Fatalf("records: %d drops (%d syn_queue_full); the kernel counted %d (%d TCPReqQFullDrop)", sum, sumQ, truth, truthQ)
	}
}

// TestListenersTable: `tcptrace listeners` shows a listener with its owner,
// its full accept queue and the drops its namespace counted.
func TestListenersTable(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	ln := startRole(t, ns, "backlog1", "-addr", "127.0.0.1:7072")
	ln.expect("listening")
	ov := startRole(t, ns, "overflow", "-addr", "127.0.0.1:7072", "-n", "10", "-deferred", "0")
	ov.expect("deferred")
	exe, _ := os.Executable()
	low := netstat(t, ln.pid())["ListenDrops"]
	code, stdout, stderr := runTcptrace(t, nil, exe, "listeners", "-o", "json", "--port", "7072")
	high := netstat(t, ln.pid())["ListenDrops"]
	if code != 0 {
		t.Fatalf("listeners: exit %d: %s", code, stderr)
	}
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if uint32(m["netns"].(float64)) == ns.ino {
			rows = append(rows, m)
		}
	}
	if len(rows) != 1 {
		t.Fatalf("rows for our namespace: %v", rows)
	}
	r := rows[0]
	drops := uint64(r["drops"].(float64))
	if int(r["pid"].(float64)) != ln.pid() || r["backlog"] != 2.0 || r["max_backlog"] != 1.0 || drops < low || drops > high || low == 0 {
		t.Fatalf("row %v: want pid %d, backlog 2/1, drops between %d and %d", r, ln.pid(), low, high)
	}
	ov.expect("done")
	ov.wait()
	ln.send("close")
	ln.expect("closed")
	ln.send("exit")
	ln.wait()
}
