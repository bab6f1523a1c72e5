package closewait

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

const sec = uint64(time.Second)

func fd(sock uint64, pid uint32, comm string, lport uint16, raddr string, rport uint16, state tcpstate.State) owner.Holder {
	h := owner.Holder{Sock: sock, PID: pid, State: state, Family: event.IPv4,
		LAddr: netip.MustParseAddr("10.0.0.5"), RAddr: netip.MustParseAddr(raddr), LPort: lport, RPort: rport}
	copy(h.Comm[:], comm)
	return h
}

func TestReportRanksAndAges(t *testing.T) {
	tr := NewTracker(100 * sec)
	// Socket 2 and 3 entered CLOSE_WAIT live; socket 1 was already there.
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 150 * sec, NewState: tcpstate.CloseWait})
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 3, Mono: 170 * sec, NewState: tcpstate.CloseWait})
	scan := []owner.Holder{
		fd(1, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait),
		fd(2, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait),
		fd(2, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait), // dup()
		fd(3, 20, "java", 8080, "10.0.0.7", 5432, tcpstate.CloseWait),
		fd(4, 20, "java", 8080, "10.0.0.7", 5432, tcpstate.Established),
	}
	scan[0].LastActive = 40 * sec // its last packet: long before tcptrace started
	procs := tr.Report(scan, 200*sec, Filter{})
	if len(procs) != 2 || procs[0].PID != 10 || len(procs[0].Sockets) != 2 || procs[1].PID != 20 || len(procs[1].Sockets) != 1 {
		t.Fatalf("ranking: %+v", procs)
	}
	node := procs[0]
	if node.Sockets[0].Sock != 1 || node.Sockets[0].Age != (Age{D: 160 * time.Second}) {
		t.Fatalf("pre-existing socket: %+v, want a 160 s lower bound from its last activity", node.Sockets[0])
	}
	if node.Sockets[1].Age != (Age{D: 50 * time.Second, Known: true}) {
		t.Fatalf("live socket age %+v, want exactly 50 s", node.Sockets[1].Age)
	}
	if node.Oldest != (Age{D: 160 * time.Second}) {
		t.Fatalf("oldest %+v: unknown because one age is only a bound", node.Oldest)
	}
	if procs[1].Oldest != (Age{D: 30 * time.Second, Known: true}) {
		t.Fatalf("java oldest %+v", procs[1].Oldest)
	}
	if len(node.Peers) != 1 || node.Peers[0].N != 2 || node.Peers[0].Value.String() != "10.0.0.9:6379" {
		t.Fatalf("peers %+v", node.Peers)
	}
}

func TestSocketLeavingIsForgotten(t *testing.T) {
	tr := NewTracker(0)
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 5 * sec, NewState: tcpstate.CloseWait})
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 7 * sec, OldState: tcpstate.CloseWait, NewState: tcpstate.LastAck})
	if _, ok := tr.entered[2]; ok {
		t.Fatal("a socket that left CLOSE_WAIT is still dated")
	}
}

// A socket enters CLOSE_WAIT in a listener's accept queue: no process holds
// it, so a scan does not find it; accepted later, it still has its exact age.
func TestQueuedSocketKeepsItsAge(t *testing.T) {
	tr := NewTracker(0)
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 3, Mono: 6 * sec, NewState: tcpstate.CloseWait})
	if procs := tr.Report(nil, 8*sec, Filter{}); len(procs) != 0 {
		t.Fatalf("report with no holders: %+v", procs)
	}
	procs := tr.Report([]owner.Holder{fd(3, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait)}, 9*sec, Filter{})
	if len(procs) != 1 || procs[0].Sockets[0].Age != (Age{D: 3 * time.Second, Known: true}) {
		t.Fatalf("accepted after a scan: %+v, want exactly 3s", procs)
	}
}

// After a loss a change out of CLOSE_WAIT may have gone unseen: the next
// scan is the truth, and dates of sockets it does not find are dropped.
func TestLossForgetsUnseenSockets(t *testing.T) {
	for _, kind := range []event.Kind{event.KindLost, event.KindGaps} {
		tr := NewTracker(0)
		tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 5 * sec, NewState: tcpstate.CloseWait})
		tr.Observe(&event.Event{Kind: event.KindState, Sock: 3, Mono: 6 * sec, NewState: tcpstate.CloseWait})
		tr.Observe(&event.Event{Kind: kind, Lost: 1})
		tr.Report([]owner.Holder{fd(3, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait)}, 8*sec, Filter{})
		if _, ok := tr.entered[2]; ok || len(tr.entered) != 1 {
			t.Fatalf("kind %v: after a loss, dates kept for sockets no scan sees: %v", kind, tr.entered)
		}
	}
}

// A scan is shown a drain after it was taken; a socket entering CLOSE_WAIT
// meanwhile is missing from it, and must still be dated by the next one.
func TestEntryAfterScanIsKept(t *testing.T) {
	tr := NewTracker(0)
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 4, Mono: 11 * sec, NewState: tcpstate.CloseWait})
	tr.Report(nil, 10*sec, Filter{}) // taken at 10 s, before socket 4 entered
	procs := tr.Report([]owner.Holder{fd(4, 4242, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait)}, 20*sec, Filter{})
	if len(procs) != 1 || len(procs[0].Sockets) != 1 {
		t.Fatalf("report: %+v", procs)
	}
	if age := procs[0].Sockets[0].Age; !age.Known || age.D != 9*time.Second {
		t.Fatalf("age %+v, want exactly 9s", age)
	}
}

func TestSharedSocketCountsForEachHolder(t *testing.T) {
	tr := NewTracker(0)
	procs := tr.Report([]owner.Holder{
		fd(1, 10, "parent", 80, "10.0.0.9", 1000, tcpstate.CloseWait),
		fd(1, 11, "child", 80, "10.0.0.9", 1000, tcpstate.CloseWait),
	}, sec, Filter{})
	if len(procs) != 2 || len(procs[0].Sockets) != 1 || len(procs[1].Sockets) != 1 {
		t.Fatalf("got %+v", procs)
	}
}

func TestFilters(t *testing.T) {
	tr := NewTracker(0)
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 90 * sec, NewState: tcpstate.CloseWait})
	scan := []owner.Holder{
		fd(1, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait), // >= 100 s (since start)
		fd(2, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait), // exactly 10 s
		fd(3, 20, "java", 8080, "10.0.0.7", 5432, tcpstate.CloseWait), // >= 100 s
	}
	count := func(f Filter) int {
		n := 0
		for _, p := range tr.Report(scan, 100*sec, f) {
			n += len(p.Sockets)
		}
		return n
	}
	for _, tc := range []struct {
		f    Filter
		want int
	}{
		{Filter{}, 3},
		{Filter{PIDs: []uint32{20}}, 1},
		{Filter{Comm: "node"}, 2},
		{Filter{Ports: []uint16{6379}}, 2},
		{Filter{Ports: []uint16{8080}}, 1},
		{Filter{MinAge: 30 * time.Second}, 2},
		{Filter{MinAge: 200 * time.Second}, 0},
	} {
		if got := count(tc.f); got != tc.want {
			t.Errorf("%+v: %d sockets, want %d", tc.f, got, tc.want)
		}
	}
}

func TestJSON(t *testing.T) {
	tr := NewTracker(0)
	tr.Observe(&event.Event{Kind: event.KindState, Sock: 2, Mono: 4 * sec, NewState: tcpstate.CloseWait})
	procs := tr.Report([]owner.Holder{
		fd(1, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait),
		fd(2, 10, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait),
	}, 10*sec, Filter{})
	line := AppendJSON(nil, time.Unix(0, 0), &procs[0], nil)
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	if m["type"] != "close_wait" || m["pid"] != 10.0 || m["comm"] != "node" || m["count"] != 2.0 {
		t.Fatalf("got %v", m)
	}
	if v, ok := m["oldest_seconds"]; !ok || v != nil || m["oldest_at_least_seconds"] != 10.0 {
		t.Fatalf("oldest: %v / %v", m["oldest_seconds"], m["oldest_at_least_seconds"])
	}
	socks := m["sockets"].([]any)
	first, second := socks[0].(map[string]any), socks[1].(map[string]any)
	if first["age_seconds"] != nil || first["age_at_least_seconds"] != 10.0 || second["age_seconds"] != 6.0 {
		t.Fatalf("socket ages: %v %v", first, second)
	}
	if first["laddr"] != "10.0.0.5" || first["lport"] != 3000.0 || first["raddr"] != "10.0.0.9" || first["rport"] != 6379.0 {
		t.Fatalf("socket: %v", first)
	}
	if fmt.Sprint(m["peers"]) != "[map[count:2 raddr:10.0.0.9 rport:6379]]" {
		t.Fatalf("peers %v", m["peers"])
	}
}

func TestText(t *testing.T) {
	tr := NewTracker(0)
	procs := tr.Report([]owner.Holder{fd(1, 4242, "node", 3000, "10.0.0.9", 6379, tcpstate.CloseWait)}, 192*sec, Filter{})
	var b bytes.Buffer
	WriteText(&b, time.Date(2026, 1, 1, 14, 2, 11, 0, time.UTC), procs)
	out := b.String()
	for _, want := range []string{"14:02:11", "1 sockets held by 1 processes", "4242", "node", ">=3m12s", "10.0.0.9:6379 (1)", "3000 (1)"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	WriteText(&b, time.Unix(0, 0), nil)
	if !strings.Contains(b.String(), "0 sockets held by 0 processes") || strings.Contains(b.String(), "PID") {
		t.Errorf("empty table: %q", b.String())
	}
}

func TestFormatAge(t *testing.T) {
	for a, want := range map[Age]string{
		{D: 1500 * time.Millisecond, Known: true}: "1.5s",
		{D: 192 * time.Second, Known: true}:       "3m12s",
		{D: 3 * time.Hour}:                        ">=3h0m0s",
	} {
		if got := FormatAge(a); got != want {
			t.Errorf("%+v: %q, want %q", a, got, want)
		}
	}
}
