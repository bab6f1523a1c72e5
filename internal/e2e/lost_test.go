package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
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
	var lost uint64
	tr.mu.Lock()
	for _, r := range tr.recs {
		if r.Type == "lost" {
			lost += r.Count
		}
	}
	tr.mu.Unlock()
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
