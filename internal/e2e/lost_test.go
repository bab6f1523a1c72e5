package e2e

import (
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/tracer"
)

// TestLostIsCounted: with a one-page ring buffer and a reader stalled on a
// full stdout pipe, records are lost; every one of them is accounted for in
// lost records, so delivered + lost equals the kernel's true number of changes.
func TestLostIsCounted(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	const conns = 400
	truth := 10*conns + 2

	// States only: lost records of any kind are counted, and the storm makes
	// other TCP drops too.
	tr := newTracer(t, "-o", "json", "--ring-size", "4K", "--port", "7003", "--events", "states")
	tr.waitReady() // stdout is not read yet: the tracer stalls once the pipe fills
	storm := startRole(t, ns, "storm", "-net", "tcp4", "-addr", "127.0.0.1:7003", "-n", strconv.Itoa(conns))
	storm.expect("done")
	storm.wait()
	close(tr.gate)
	tr.stopClean()

	delivered := len(tr.states(ns))
	lost := tr.lost()
	t.Logf("delivered %d, lost %d, truth %d", delivered, lost, truth)
	if lost == 0 {
		t.Fatalf("expected losses with a 4K ring and a stalled reader; delivered %d of %d", delivered, truth)
	}
	if delivered+int(lost) != truth {
		t.Fatalf("delivered %d + lost %d = %d, want %d", delivered, lost, delivered+int(lost), truth)
	}
	m := regexp.MustCompile(`(\d+) events, (\d+) lost`).FindStringSubmatch(tr.stderrText())
	if m == nil || m[2] != fmt.Sprint(lost) {
		t.Fatalf("exit summary %q does not report %d lost", m, lost)
	}
}

// TestNoChangeMissed: a storm from several clients at once, with the reader
// keeping up. The kernel skips a state program when a softirq's state change
// interrupts it; with tp_btf and raw_tp a second program records those, so
// every change arrives, once (but for the known defect below). The classic
// tracepoint has no such program: what it misses is counted as lost where the
// kernel counts it.
func TestNoChangeMissed(t *testing.T) {
	needRoot(t)
	conns := 20000
	if testing.Short() {
		conns = 2000
	}
	truth := 10*conns + 2
	// The last: records through one ring shared by the CPUs, as where the
	// kernel takes no ring buffers inside a map.
	for _, kind := range []string{"tp_btf", "raw_tp", "tracepoint", "shared ring"} {
		t.Run(kind, func(t *testing.T) {
			ns := newNetNS(t)
			// Rings that each hold the whole storm (~128 bytes a change,
			// one ring per CPU): a reader starved of CPU for a while loses
			// nothing, so every loss left is a change no program recorded.
			args := []string{"--hook-kind", kind, "--port", "7005", "--events", "states", "-v",
				"--ring-size", strconv.Itoa(ringFor(truth * runtime.NumCPU()))}
			rings := tracer.CPURings
			if kind == "shared ring" {
				kind, rings = "tp_btf", "one shared"
				args[1] = kind
				args = append(args, "--test-without", tracer.CPURings)
			}
			tr := startTracer(t, args...)
			if !strings.Contains(tr.stderrText(), "ring buffer: "+rings) {
				t.Fatalf("-v names no ring buffer %q:\n%s", rings, tr.stderrText())
			}
			storm := startRole(t, ns, "storm", "-addr", "127.0.0.1:7005", "-n", strconv.Itoa(conns), "-clients", "4")
			storm.expect("done")
			storm.wait()
			// The storm's last packets can still be in softirq work
			// (ksoftirqd) after it exits: wait for the count to add up.
			count := func() ([]record, uint64) { return tr.states(ns), tr.lost() }
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if recs, lost := count(); len(recs)+int(lost) >= truth {
					break
				}
			}
			tr.stopClean()
			recs, lost := count()
			m := nestedReport.FindStringSubmatch(tr.stderrText())
			if m == nil {
				t.Fatalf("no nested-change report in:\n%s", tr.stderrText())
			}
			sum := regexp.MustCompile(`\d+ events, \d+ lost`).FindString(tr.stderrText())
			t.Logf("%d connections: delivered %d, lost %d, truth %d; tcptrace: %s; %s", conns, len(recs), lost, truth, sum, m[0])
			// Nothing may come twice, and what the kernel skipped must be
			// recorded (tp_btf, raw_tp) or counted (tracepoint).
			if len(recs) > truth {
				t.Fatalf("delivered %d, more than the %d changes made: some came twice", len(recs), truth)
			}
			if kind != "tracepoint" && (lost != 0 || m[1] != m[2]) {
				t.Errorf("lost %d, %s: the catch program should have recorded every skipped change", lost, m[0])
			}
			short := truth - len(recs) - int(lost)
			if short > 0 {
				t.Logf("%d changes neither delivered nor counted lost (%d sockets with gaps reported); by change: %v",
					short, gapCount(tr), byChange(recs))
			}
			bound := max(8, truth/5000)
			if kind == "tracepoint" {
				// Kernels before the misses counter for perf-event programs
				// (seen on 5.10 and 6.1: 0.06-0.2%) skip a nested classic
				// tracepoint program without counting it: the fallback's
				// known limit.
				bound = truth / 100
			}
			// Known defect, cause not found yet (it predates the catch
			// program): on the 6.18 host under CPU contention, the last two
			// changes (FIN_WAIT1->FIN_WAIT2->CLOSE) of up to one socket in
			// 5,000 reach no program (ftrace's own record has them) and the
			// kernel counts no skip. The kernel side reports such sockets
			// as gaps when their address starts a new life. Bounded so
			// that it cannot grow unseen.
			if short > bound {
				t.Errorf("%d changes neither delivered nor counted lost, over the bound of %d; sockets short of 5 changes:\n%s",
					short, bound, dump(shortSockets(recs)))
			}
			if kind != "tracepoint" && m[1] != m[2] {
				t.Errorf("the kernel skipped the state program %s times, the catch program recorded %s", m[1], m[2])
			}
			// The changes of a socket come in the order made, whichever
			// CPUs made them (each writes its own ring).
			if bad := outOfOrder(recs); len(bad) > 0 {
				t.Errorf("%d changes came out of order, first ones (each after its socket's previous record):\n%s", len(bad)/2, dump(bad[:min(len(bad), 16)]))
			}
		})
	}
}

// TestSpareRing: a CPU offline when tcptrace starts (a VM's hot-plug slot, an
// SMT sibling turned off) gets no ring of its own; the offline CPUs share a
// spare one. Brought online while tracing, that CPU's changes come through
// the spare ring: every one, none lost, each socket's in order.
func TestSpareRing(t *testing.T) {
	needRoot(t)
	cpu, err := lastOnlineCPU()
	if err != nil {
		t.Fatal(err)
	}
	ctl := fmt.Sprintf("/sys/devices/system/cpu/cpu%d/online", cpu)
	if _, err := os.Stat(ctl); cpu == 0 || err != nil {
		unavailable(t, "needs a second CPU that can be taken offline ("+ctl+")")
		return
	}
	setOnline := func(on string) {
		t.Helper()
		if err := os.WriteFile(ctl, []byte(on), 0); err != nil {
			t.Fatalf("write %s to %s: %v", on, ctl, err)
		}
	}
	setOnline("0")
	t.Cleanup(func() { os.WriteFile(ctl, []byte("1"), 0) })

	ns := newNetNS(t)
	conns := 2000
	truth := 10*conns + 2
	tr := startTracer(t, "--port", "7032", "--events", "states", "-v")
	if !regexp.MustCompile(`one of them shared by the (CPU|\d+ CPUs) offline at the start`).MatchString(tr.stderrText()) {
		t.Fatalf("-v names no spare ring for CPU %d:\n%s", cpu, tr.stderrText())
	}
	setOnline("1")
	// The storm runs on that CPU alone: a process started from the
	// namespace's thread inherits its CPU affinity.
	pin := func(cpus ...int) error {
		var set unix.CPUSet
		for _, c := range cpus {
			set.Set(c)
		}
		return unix.SchedSetaffinity(0, &set)
	}
	if err := ns.do(func() error { return pin(cpu) }); err != nil {
		t.Fatalf("pin to CPU %d: %v", cpu, err)
	}
	storm := startRole(t, ns, "storm", "-addr", "127.0.0.1:7032", "-n", strconv.Itoa(conns), "-clients", "2")
	all := make([]int, cpu+1)
	for i := range all {
		all[i] = i
	}
	if err := ns.do(func() error { return pin(all...) }); err != nil {
		t.Fatal(err)
	}
	storm.expect("done")
	storm.wait()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(tr.states(ns)) >= truth {
			break
		}
	}
	tr.stopClean()
	recs, lost := tr.states(ns), tr.lost()
	m := regexp.MustCompile(`spare ring of the (?:CPU|\d+ CPUs) offline at the start: (\d+) records`).FindStringSubmatch(tr.stderrText())
	if m == nil {
		t.Fatalf("-v's last lines count no records through the spare ring:\n%s", tr.stderrText())
	}
	spare, _ := strconv.Atoi(m[1])
	t.Logf("CPU %d: %d of %d changes delivered, %d through the spare ring, %d lost", cpu, len(recs), truth, spare, lost)
	if spare < truth/2 {
		t.Errorf("%d records through the spare ring; the storm on CPU %d made %d changes", spare, cpu, truth)
	}
	if lost != 0 || len(recs) > truth {
		t.Errorf("delivered %d of %d changes, %d lost", len(recs), truth, lost)
	}
	// The known defect of TestNoChangeMissed, bounded as there.
	if short := truth - len(recs); short > max(8, truth/5000) {
		t.Errorf("%d changes not delivered; sockets short of 5 changes:\n%s", short, dump(shortSockets(recs)))
	}
	if bad := outOfOrder(recs); len(bad) > 0 {
		t.Errorf("%d changes came out of order, first ones:\n%s", len(bad)/2, dump(bad[:min(len(bad), 16)]))
	}
}

// lastOnlineCPU is the highest-numbered online CPU.
func lastOnlineCPU() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0, err
	}
	list := strings.TrimSpace(string(b))
	last := list[max(strings.LastIndexAny(list, ",-")+1, 0):]
	return strconv.Atoi(last)
}

// TestStartDuringChurn starts tcptrace while connections churn, as on the
// busy host it is run on. A state change's three programs attach one after
// another, and a change that met only the first (push) would leave its token
// on that CPU's stack for good: the catch program then looks under it in vain
// (no skipped change caught), or a later change at the same address takes it
// for its own and goes out twice. So the push program waits to be armed until
// all three are attached: once the churn stops, every CPU's stack is empty,
// and the catch program recorded no more than the kernel skipped. (Armed from
// the start, this test failed on the second check: the churn's reused
// addresses took the stale tokens off, each a change sent twice. And with
// the skips counted from a reading taken once all three were attached, it
// failed now and then on the last check: a change skipped in between was
// caught but not counted as skipped.)
func TestStartDuringChurn(t *testing.T) {
	needRoot(t)
	for _, kind := range []string{"tp_btf", "raw_tp"} {
		t.Run(kind, func(t *testing.T) {
			ns := newNetNS(t)
			churn := startRole(t, ns, "churn", "-addr", "127.0.0.1:7027", "-clients", "8")
			churn.expect("started")
			tr := startTracer(t, "--hook-kind", kind, "--port", "7027", "--events", "states", "-v")
			seen := 0
			for deadline := time.Now().Add(waitLong); time.Now().Before(deadline) && seen < 1000; time.Sleep(20 * time.Millisecond) {
				seen = len(tr.states(ns))
			}
			churn.send("stop")
			churn.expect("done")
			churn.wait()
			time.Sleep(200 * time.Millisecond) // the last packets' softirq work
			depths, err := tracer.NestDepths(newestMap(t, "nesting"))
			if err != nil {
				t.Fatal(err)
			}
			tr.stopClean()
			m := nestedReport.FindStringSubmatch(tr.stderrText())
			if m == nil {
				t.Fatalf("no nested-change report in:\n%s", tr.stderrText())
			}
			t.Logf("%d state changes recorded while connections churned; per-CPU stack depths after: %v; %s", seen, depths, m[0])
			if seen < 1000 {
				t.Fatalf("only %d state changes recorded in %v of churn", seen, waitLong)
			}
			for cpu, d := range depths {
				if d != 0 {
					t.Errorf("CPU %d: %d tokens left on the state programs' stack after the churn", cpu, d)
				}
			}
			// The catch program records only what the state program skipped.
			skipped, _ := strconv.Atoi(m[1]) // digits: the pattern matched
			if caught, _ := strconv.Atoi(m[2]); caught > skipped {
				t.Errorf("%s: more recorded than skipped (a change sent twice, or a skip not counted)", m[0])
			}
		})
	}
}

// nestedReport is -v's line on the state changes the kernel skipped.
var nestedReport = regexp.MustCompile(`nested state changes: (\d+) skipped by the kernel, (\d+) of them recorded`)

// outOfOrder returns, in pairs, records whose change does not start where
// their socket's previous record left it, each after that previous record.
// A socket's life starts at CLOSE (or at LISTEN->SYN_RECV, a new
// connection's socket), whatever its address held before: a life whose end
// went unseen (the known defect above) is no disorder.
func outOfOrder(recs []record) []record {
	last := map[string]record{}
	var bad []record
	for _, r := range recs {
		p, ok := last[r.Sock]
		last[r.Sock] = r
		born := r.OldState == "CLOSE" || (r.OldState == "LISTEN" && r.NewState == "SYN_RECV")
		if ok && !born && r.OldState != p.NewState {
			bad = append(bad, p, r)
		}
	}
	return bad
}

func byChange(recs []record) map[string]int {
	n := map[string]int{}
	for _, r := range recs {
		n[r.OldState+"->"+r.NewState]++
	}
	return n
}

// shortSockets returns the records of (at most 8) sockets with fewer than 5 changes.
func shortSockets(recs []record) []record {
	bySock := map[string][]record{}
	for _, r := range recs {
		bySock[r.Sock] = append(bySock[r.Sock], r)
	}
	var out []record
	n := 0
	for _, rs := range bySock {
		if len(rs) < 5 && n < 8 {
			out = append(out, rs...)
			n++
		}
	}
	return out
}

// ringFor is the smallest ring size (a power of two) that holds n state
// records, at least the default 8M.
func ringFor(n int) int {
	size := 8 << 20
	for size < n*128 {
		size *= 2
	}
	return size
}
