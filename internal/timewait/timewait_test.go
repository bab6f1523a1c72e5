package timewait

import (
	"encoding/json"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

const sec = uint64(time.Second)

func change(mono uint64, pid uint32, comm string, raddr string, rport, lport uint16, from, to tcpstate.State) *event.Event {
	e := &event.Event{Kind: event.KindState, Mono: mono, NetNS: 7, PID: pid, RAddr: netip.MustParseAddr(raddr),
		RPort: rport, LPort: lport, OldState: from, NewState: to}
	e.SetComm(comm)
	return e
}

func timeWait(mono uint64, pid uint32, comm, raddr string, rport, lport uint16) *event.Event {
	e := change(mono, pid, comm, raddr, rport, lport, tcpstate.FinWait2, tcpstate.Close)
	e.TimeWait = true
	return e
}

// ports: 40000-40009 ephemeral in namespace 7.
func ports(netns, pid uint32) (uint16, uint16, bool) { return 40000, 40009, netns == 7 }

func TestTrackerCountsAndRanks(t *testing.T) {
	start := 1000 * sec
	tr := NewTracker(start, ports)
	for i := range 4 {
		tr.Observe(timeWait(start+uint64(i)*sec, 10, "php-fpm", "10.0.0.9", 3306, 40000+uint16(i)))
		tr.Observe(change(start, 10, "php-fpm", "10.0.0.9", 3306, 40000+uint16(i), tcpstate.SynSent, tcpstate.Established))
	}
	// Server side: its local port is no ephemeral one.
	tr.Observe(timeWait(start, 10, "php-fpm", "10.0.0.7", 51000, 80))
	noPort := change(start+2*sec, 20, "node", "10.0.0.8", 6379, 0, tcpstate.SynSent, tcpstate.Close)
	noPort.Error = syscall.EADDRNOTAVAIL
	tr.Observe(noPort)
	refused := change(start+2*sec, 20, "node", "10.0.0.8", 6379, 40005, tcpstate.SynSent, tcpstate.Close)
	refused.Error = syscall.ECONNREFUSED
	tr.Observe(refused)
	// Not counted: other changes, a reset's close, other record kinds.
	tr.Observe(change(start, 20, "node", "10.0.0.8", 6379, 40006, tcpstate.Established, tcpstate.CloseWait))
	tr.Observe(change(start, 20, "node", "10.0.0.8", 6379, 40006, tcpstate.FinWait2, tcpstate.Close))
	tr.Observe(&event.Event{Kind: event.KindRetrans, Mono: start, PID: 20})

	got := tr.Report(start + 5*sec)
	if len(got) != 2 {
		t.Fatalf("%d processes, want 2: %+v", len(got), got)
	}
	php, node := got[0], got[1]
	if php.PID != 10 || php.Counts != (Counts{TimeWait: 5, Connects: 4}) || len(php.Peers) != 2 {
		t.Fatalf("php-fpm: %+v", php)
	}
	db := php.Peers[0]
	if db.RAddr.String() != "10.0.0.9" || db.TimeWait != 4 || db.Ephemeral != 4 || db.Ports != 10 {
		t.Fatalf("php-fpm's first peer: %+v", db)
	}
	if share, ok := db.Share(); !ok || share != 0.4 {
		t.Fatalf("share %v %v, want 0.4", share, ok)
	}
	// Grouped by client address and local port: each client's own ports vary.
	if srv := php.Peers[1]; srv.TimeWait != 1 || srv.Ephemeral != 0 || srv.RPort != 0 || srv.LPort != 80 ||
		srv.Name() != "10.0.0.7->:80" {
		t.Fatalf("php-fpm's server-side peer: %+v", srv)
	} else if _, ok := srv.Share(); ok {
		t.Fatal("a share of ephemeral ports for accepted connections")
	}
	if db.Name() != "10.0.0.9:3306" {
		t.Fatalf("name %q", db.Name())
	}
	if node.PID != 20 || node.Counts != (Counts{NoPort: 1}) {
		t.Fatalf("node: %+v", node)
	}
	if w := tr.Watched(start + 5*sec); w != 5 {
		t.Fatalf("watched %v, want 5", w)
	}

	// A minute on, the first second has aged out; later, everything.
	got = tr.Report(start + (Window)*sec)
	if got[0].TimeWait != 3 || got[0].Connects != 0 || len(got[0].Peers) != 1 {
		t.Fatalf("after a minute: %+v", got[0])
	}
	if got = tr.Report(start + (Window+10)*sec); len(got) != 0 || len(tr.keys) != 0 {
		t.Fatalf("after the window: %+v, %d keys left", got, len(tr.keys))
	}
	if w := tr.Watched(start + 3600*sec); w != Window {
		t.Fatalf("watched %v, want %d", w, Window)
	}
}

// A key keeps only the seconds that counted something, in order, whatever
// order the records came in (a late one from another CPU), and none past
// the window.
func TestTrackerSeconds(t *testing.T) {
	tr := NewTracker(0, nil)
	tr.Observe(timeWait(3*sec, 1, "a", "::1", 80, 50000))
	tr.Observe(timeWait(10*sec, 1, "a", "::1", 80, 50001))
	tr.Observe(timeWait(9*sec+sec/2, 1, "a", "::1", 80, 50002)) // late
	tr.Observe(timeWait(10*sec, 1, "a", "::1", 80, 50003))
	for _, w := range tr.keys {
		if len(w.secs) != 3 || w.secs[0].at != 3 || w.secs[1].at != 9 || w.secs[2].at != 10 || w.secs[2].TimeWait != 2 {
			t.Fatalf("seconds %+v", w.secs)
		}
	}
	got := tr.Report((3 + Window) * sec)
	if len(got) != 1 || got[0].TimeWait != 3 {
		t.Fatalf("%+v", got)
	}
	for _, w := range tr.keys {
		if len(w.secs) != 2 {
			t.Fatalf("an aged-out second kept: %+v", w.secs)
		}
	}
	if _, ok := got[0].Peers[0].Share(); ok {
		t.Fatal("a share without a port range")
	}
}

func TestRender(t *testing.T) {
	tr := NewTracker(0, ports)
	tr.Observe(timeWait(sec, 10, "php-fpm", "10.0.0.9", 3306, 40001))
	tr.Observe(timeWait(sec, 10, "php-fpm", "10.0.0.9", 3306, 40003))
	tr.Observe(timeWait(sec, 10, "php-fpm", "fd00::9", 3306, 40002))
	tr.Observe(timeWait(sec, 10, "php-fpm", "10.0.0.7", 51000, 80))
	procs := tr.Report(2 * sec)
	at := time.Date(2026, 12, 7, 5, 2, 11, 0, time.UTC)
	var b strings.Builder
	if err := WriteText(&b, at.Local(), tr.Watched(2*sec), procs); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, want := range []string{"TIME_WAIT: 4 closes into it over the last 2s (since tcptrace started) by 1 processes",
		"php-fpm", "10.0.0.9:3306 2 (20%)  10.0.0.7->:80 1  [fd00::9]:3306 1 (10%)\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	line := AppendJSON(nil, at, tr.Watched(2*sec), &procs[0])
	var m struct {
		Type     string  `json:"type"`
		Window   float64 `json:"window_seconds"`
		PID      int     `json:"pid"`
		Comm     string  `json:"comm"`
		TimeWait int     `json:"time_wait"`
		Peers    []struct {
			RAddr string   `json:"raddr"`
			RPort *int     `json:"rport"`
			LPort *int     `json:"lport"`
			Ports *int     `json:"ephemeral_ports"`
			Share *float64 `json:"ephemeral_share"`
		} `json:"peers"`
	}
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	if m.Type != "time_wait" || m.Window != 2 || m.PID != 10 || m.Comm != "php-fpm" || m.TimeWait != 4 ||
		len(m.Peers) != 3 || m.Peers[0].Ports == nil || *m.Peers[0].Ports != 10 || *m.Peers[0].Share != 0.2 ||
		*m.Peers[0].RPort != 3306 || m.Peers[0].LPort != nil {
		t.Fatalf("%s", line)
	}
	// The accepted connections' peer: its local port, no share.
	if srv := m.Peers[1]; srv.RAddr != "10.0.0.7" || srv.RPort != nil || *srv.LPort != 80 || srv.Share != nil || srv.Ports != nil {
		t.Fatalf("accepted connections' peer: %s", line)
	}
}

// Seeded timewait sockets: a row per namespace, no process; each ends when
// the kernel ends it; a close from before the snapshot of a seeded
// connection is its socket's, not counted twice.
func TestTrackerSeed(t *testing.T) {
	start := 100 * sec
	tr := NewTracker(start, ports)
	local, db, client := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.0.7")
	tr.Seed([]Earlier{
		{NetNS: 7, LAddr: local, RAddr: db, LPort: 40001, RPort: 3306, Left: 30 * time.Second},
		{NetNS: 7, LAddr: local, RAddr: db, LPort: 40002, RPort: 3306, Left: 5 * time.Second},
		{NetNS: 7, LAddr: local, RAddr: client, LPort: 80, RPort: 51000, Left: 59 * time.Second},
		{NetNS: 8, LAddr: local, RAddr: db, LPort: 40001, RPort: 3306, Left: 90 * time.Second}, // past the window: ends with it
	}, start)
	closeOf := func(mono uint64, lport uint16) *event.Event {
		e := timeWait(mono, 10, "php-fpm", "10.0.0.9", 3306, lport)
		e.LAddr = local
		return e
	}
	tr.Observe(closeOf(start-sec/2, 40001)) // seeded: not again
	tr.Observe(closeOf(start-sec/2, 40003)) // made after its namespace was read
	tr.Observe(closeOf(start+sec/2, 40002)) // a new connection on a seeded one's ends
	tr.Observe(closeOf(start+2*sec, 40001))

	got := tr.Report(start + sec)
	if len(got) != 3 {
		t.Fatalf("%d rows, want 3: %+v", len(got), got)
	}
	before, proc, other := got[0], got[1], got[2]
	if !before.BeforeStart || before.PID != 0 || before.NetNS != 7 || before.TimeWait != 3 || len(before.Peers) != 2 {
		t.Fatalf("namespace 7 from before: %+v", before)
	}
	if p := before.Peers[0]; p.RAddr != db || p.RPort != 3306 || p.TimeWait != 2 || p.Ephemeral != 2 {
		t.Fatalf("its peer %+v", p)
	}
	if p := before.Peers[1]; p.RAddr != client || p.LPort != 80 || p.TimeWait != 1 {
		t.Fatalf("its accepted connections %+v", p)
	}
	if proc.BeforeStart || proc.PID != 10 || proc.TimeWait != 2 {
		t.Fatalf("the process: %+v (the seeded close counted again?)", proc)
	}
	if !other.BeforeStart || other.NetNS != 8 || other.TimeWait != 1 || other.Peers[0].Ports != 0 {
		t.Fatalf("namespace 8 from before: %+v", other)
	}
	// The 5 s one has ended; the 30 s one ends at 130 s; the 59 s one at 159 s.
	for _, c := range []struct {
		at   uint64
		want uint64
	}{{start + 5*sec, 2}, {start + 29*sec, 2}, {start + 30*sec, 1}, {start + 59*sec, 0}} {
		n := uint64(0)
		for _, p := range tr.Report(c.at) {
			if p.BeforeStart && p.NetNS == 7 {
				n = p.TimeWait
			}
		}
		if n != c.want {
			t.Errorf("at %ds: %d from before in namespace 7, want %d", c.at/sec, n, c.want)
		}
	}
	// Past the hold, a close from before the snapshot is no longer matched
	// (none can come so late): the set is gone.
	if tr.seeded != nil {
		t.Error("seeded connections kept past the hold")
	}

	procs := []Process{before, proc}
	var b strings.Builder
	if err := WriteText(&b, time.Unix(0, 0), 1, procs); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"by 1 processes, 3 timewait sockets from before tcptrace started;",
		"\n-        (before start)           3         0        0  10.0.0.9:3306 2 (20%)  10.0.0.7->:80 1\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	for i, want := range []string{`"pid":0,"comm":"","before_start":true,"time_wait":3`, `"comm":"php-fpm","before_start":false,`} {
		if line := AppendJSON(nil, time.Unix(0, 0), 1, &procs[i]); !strings.Contains(string(line), want) {
			t.Errorf("JSON lacks %s: %s", want, line)
		}
	}
}
