package owner

import (
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// fakeSource is a scripted kernel side: the fds each scan finds.
type fakeSource struct {
	fds   []Holder
	scans int
	set   map[uint64]uint32 // sock -> owner pid recorded
}

func (f *fakeSource) Scan(fn func(*Holder)) error {
	f.scans++
	for i := range f.fds {
		h := f.fds[i]
		fn(&h)
	}
	return nil
}

func (f *fakeSource) SetOwner(h *Holder) error {
	if f.set == nil {
		f.set = map[uint64]uint32{}
	}
	f.set[h.Sock] = h.PID
	return nil
}

type fakeCgroups map[uint64]string

func (c fakeCgroups) Path(id uint64) string { return c[id] }

func holder(sock uint64, pid uint32, start uint64, comm string) Holder {
	h := Holder{Sock: sock, PID: pid, Start: start, UID: pid + 1000, Cgroup: uint64(pid)}
	copy(h.Comm[:], comm)
	return h
}

// clock is a controllable time source; sleeping advances it.
type clock struct {
	t     time.Time
	slept time.Duration
}

func (c *clock) now() time.Time { return c.t }

func (c *clock) sleep(d time.Duration) {
	c.slept += d
	c.t = c.t.Add(d)
}

func newTestResolver(src *fakeSource) (*Resolver, *clock) {
	c := &clock{t: time.Unix(1000, 0)}
	r := NewResolver(src, fakeCgroups{100: "/system.slice/redis.service"})
	r.now, r.sleep = c.now, c.sleep
	return r, c
}

func mono(v uint64) func() uint64 { return func() uint64 { return v } }

func TestSnapshotRecordsPrimaryOwners(t *testing.T) {
	src := &fakeSource{fds: []Holder{
		holder(1, 100, 10, "redis"),
		holder(2, 200, 10, "parent"), holder(2, 201, 20, "child"), holder(2, 201, 20, "child"), // dup()
	}}
	r, _ := newTestResolver(src)
	if err := r.Snapshot(5); err != nil {
		t.Fatal(err)
	}
	if src.set[1] != 100 || src.set[2] != 201 {
		t.Fatalf("kernel side got owners %v, want 1:100 and 2:201 (the most recent holder)", src.set)
	}
	if got := r.pids[2]; len(got) != 2 || got[0] != 201 || got[1] != 200 {
		t.Fatalf("holders of 2: %v, want [201 200]", got)
	}
}

func TestEnrichKnownOwnerNeedsNoScan(t *testing.T) {
	src := &fakeSource{}
	r, _ := newTestResolver(src)
	e := &event.Event{Kind: event.KindState, Mono: 50, Sock: 9, PID: 100, Cgroup: 100, NewState: tcpstate.CloseWait}
	r.Enrich(e, mono(60))
	if src.scans != 0 {
		t.Fatalf("a known, verified owner triggered %d scans", src.scans)
	}
	if e.PID != 100 || e.PIDs != nil || e.CgroupPath != "/system.slice/redis.service" {
		t.Fatalf("got %+v", e)
	}
}

func TestEnrichUnknownOwnerScansOnce(t *testing.T) {
	src := &fakeSource{fds: []Holder{holder(1, 100, 10, "old-daemon")}}
	r, c := newTestResolver(src)
	r.Snapshot(5)
	// An event after the snapshot for a socket the snapshot knew: no new scan.
	e := &event.Event{Kind: event.KindState, Mono: 3, Sock: 1}
	r.Enrich(e, mono(60))
	if e.PID != 100 || string(e.CommBytes()) != "old-daemon" || src.scans != 1 {
		t.Fatalf("got pid %d comm %q after %d scans", e.PID, e.CommBytes(), src.scans)
	}
	// An unknown socket newer than the scan: a new scan, after waiting out
	// the rate limit, so the event is still named correctly.
	src.fds = append(src.fds, holder(2, 300, 30, "newer"))
	e = &event.Event{Kind: event.KindState, Mono: 70, Sock: 2}
	r.Enrich(e, mono(80))
	if e.PID != 300 || src.scans != 2 || src.set[2] != 300 {
		t.Fatalf("got pid %d after %d scans, set %v", e.PID, src.scans, src.set)
	}
	if c.slept != r.MinGap {
		t.Fatalf("waited %v for the rate limit, want %v", c.slept, r.MinGap)
	}
	// A socket no process holds: one scan, then it is remembered as unheld.
	e = &event.Event{Kind: event.KindState, Mono: 90, Sock: 3}
	r.Enrich(e, mono(95))
	if src.scans != 3 || e.OwnerKnown() {
		t.Fatalf("unheld socket: %d scans, owner %d", src.scans, e.PID)
	}
	r.Enrich(&event.Event{Kind: event.KindState, Mono: 96, Sock: 3}, mono(97))
	if src.scans != 3 {
		t.Fatalf("an unheld socket scanned again: %d scans", src.scans)
	}
	// Its CLOSE forgets it.
	r.Enrich(&event.Event{Kind: event.KindState, Mono: 98, Sock: 3, NewState: tcpstate.Close}, mono(99))
	if r.unheld[3] {
		t.Fatal("closed socket still cached as unheld")
	}
}

func TestEnrichAfterForkNamesTheChild(t *testing.T) {
	// The parent accepted (the kernel recorded it) and forked; the child kept
	// the socket and the parent closed its copy.
	src := &fakeSource{fds: []Holder{holder(1, 201, 20, "child")}}
	r, _ := newTestResolver(src)
	e := &event.Event{Kind: event.KindState, Mono: 50, Sock: 1, PID: 200, OwnerUnverified: true,
		NewState: tcpstate.CloseWait}
	e.SetComm("parent")
	r.Enrich(e, mono(60))
	if e.PID != 201 || string(e.CommBytes()) != "child" || e.OwnerUnverified || src.set[1] != 201 {
		t.Fatalf("got pid %d comm %q unverified %v, kernel told %v", e.PID, e.CommBytes(), e.OwnerUnverified, src.set)
	}
}

func TestEnrichSharedSocketListsHolders(t *testing.T) {
	src := &fakeSource{fds: []Holder{holder(1, 200, 10, "parent"), holder(1, 201, 20, "child")}}
	r, _ := newTestResolver(src)
	r.Snapshot(5)
	e := &event.Event{Kind: event.KindState, Mono: 50, Sock: 1, PID: 201}
	r.Enrich(e, mono(60))
	if len(e.PIDs) != 2 || e.PIDs[0] != 201 || e.PIDs[1] != 200 {
		t.Fatalf("pids %v", e.PIDs)
	}
	// A list that no longer contains the owner is stale: not shown.
	e = &event.Event{Kind: event.KindState, Mono: 50, Sock: 1, PID: 999}
	r.Enrich(e, mono(60))
	if e.PIDs != nil {
		t.Fatalf("stale pids %v for owner 999", e.PIDs)
	}
}

func TestEnrichForgetsClosedSockets(t *testing.T) {
	src := &fakeSource{fds: []Holder{holder(1, 100, 10, "x"), holder(1, 101, 11, "y")}}
	r, _ := newTestResolver(src)
	r.Snapshot(5)
	r.Enrich(&event.Event{Kind: event.KindState, Mono: 50, Sock: 1, PID: 101, NewState: tcpstate.Close}, mono(60))
	if r.Tracked() != 0 || len(r.pids) != 0 || len(r.pushed) != 0 {
		t.Fatalf("state kept for a closed socket: %d holders, %d pids, %d pushed", r.Tracked(), len(r.pids), len(r.pushed))
	}
}

func TestScanCostWidensTheGap(t *testing.T) {
	r, c := newTestResolver(&fakeSource{})
	r.scanEnd = c.t
	r.scanCost = time.Second
	c.t = c.t.Add(5 * time.Second)
	if got := r.untilScan(); got != 5*time.Second {
		t.Fatalf("after a 1 s scan, wait %v more at 5 s; want 5 s (a tenth of a CPU)", got)
	}
	c.t = c.t.Add(5 * time.Second)
	if got := r.untilScan(); got > 0 {
		t.Fatalf("still waiting %v after 10 s", got)
	}
}

func BenchmarkEnrichKnownOwner(b *testing.B) {
	r, _ := newTestResolver(&fakeSource{})
	e := &event.Event{Kind: event.KindState, Mono: 50, Sock: 9, PID: 100, Cgroup: 100}
	m := mono(60)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		r.Enrich(e, m)
	}
}
