package listendrops

import (
	"bufio"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/internal/event"
)

// counter is a namespace's ListenDrops as the test scripts it.
type counter map[uint32]uint64

func (c counter) read(netns, pid uint32) (uint64, bool) {
	v, ok := c[netns]
	return v, ok
}

func drop(netns uint32, n uint64) *event.Event {
	return &event.Event{Kind: event.KindDrop, NetNS: netns, PID: 42, Drop: event.Drop{Count: n}}
}

func TestExcessIsCutAndTotalsMatch(t *testing.T) {
	c := counter{7: 100}
	l := New(c.read)
	l.Start(7, 1)
	var sum uint64
	// 10 real drops, reported as 12 (two double-counted overflows).
	c[7] = 110
	for _, n := range []uint64{5, 7} {
		e := drop(7, n)
		if l.Limit(e) {
			sum += e.Drop.Count
		}
	}
	if sum != 10 {
		t.Fatalf("reported %d, the namespace counted 10", sum)
	}
	// Later drops are not cut because of the earlier excess.
	c[7] = 113
	e := drop(7, 3)
	if !l.Limit(e) || e.Drop.Count != 3 {
		t.Fatalf("next record: %+v", e.Drop)
	}
}

func TestRecordAheadOfCounterIsHeldToIt(t *testing.T) {
	c := counter{7: 0}
	l := New(c.read)
	l.Start(7, 1)
	c[7] = 4
	e := drop(7, 6)
	if !l.Limit(e) || e.Drop.Count != 4 {
		t.Fatalf("count %d, want the namespace's 4", e.Drop.Count)
	}
	e = drop(7, 1)
	if l.Limit(e) {
		t.Fatalf("a record beyond the counter went through: %+v", e.Drop)
	}
}

func TestUnreadableNamespacePassesThrough(t *testing.T) {
	l := New(counter{}.read)
	e := drop(9, 5)
	if !l.Limit(e) || e.Drop.Count != 5 {
		t.Fatal("a namespace whose counter cannot be read must not lose records")
	}
	states := &event.Event{Kind: event.KindState}
	if !l.Limit(states) {
		t.Fatal("state records are not limited")
	}
}

func TestFirstSightTakesTheRecordAsItsOwn(t *testing.T) {
	c := counter{3: 50}
	l := New(c.read)
	e := drop(3, 4)
	if !l.Limit(e) || e.Drop.Count != 4 {
		t.Fatalf("first record: %+v", e.Drop)
	}
}

func TestParseListenDrops(t *testing.T) {
	in := "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 7\nIpExt: InNoRoutes\nIpExt: 0\n"
	v, ok := parseListenDrops(bufio.NewScanner(strings.NewReader(in)))
	if !ok || v != 7 {
		t.Fatalf("got %d %v", v, ok)
	}
}

func TestCachedReadingNeverCuts(t *testing.T) {
	c := counter{7: 0}
	reads := 0
	l := New(func(ns, pid uint32) (uint64, bool) { reads++; return c.read(ns, pid) })
	l.Start(7, 1)
	c[7] = 2
	e := drop(7, 2)
	l.Limit(e)
	c[7] = 5 // more drops, counted since the cached reading
	e = drop(7, 3)
	if !l.Limit(e) || e.Drop.Count != 3 {
		t.Fatalf("cut on a stale reading: %+v", e.Drop)
	}
	before := reads
	l.Tick()
	l.Limit(drop(7, 0))
	if reads != before+1 {
		t.Fatalf("no fresh reading after Tick")
	}
}
