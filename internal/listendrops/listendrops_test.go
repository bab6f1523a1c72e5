package listendrops

import (
	"bufio"
	"strings"
	"testing"

	"github.com/tcptrace/tcptrace/internal/event"
)

// counter is each namespace's counters as the test scripts them.
type counter map[uint32]Counters

func (c counter) read(netns, pid uint32) (Counters, bool) {
	v, ok := c[netns]
	return v, ok
}

func drop(netns uint32, n uint64, reason string) *event.Event {
	return &event.Event{Kind: event.KindDrop, NetNS: netns, PID: 42, Drop: event.Drop{Count: n, Reason: reason, MaxBacklog: 4}}
}

// collect applies e and returns what came out.
func collect(t *testing.T, l *Limiter, e *event.Event) []event.Event {
	t.Helper()
	var out []event.Event
	if err := l.Apply(e, func(x *event.Event) error { out = append(out, *x); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func sum(es []event.Event) (n uint64) {
	for _, e := range es {
		n += e.Drop.Count
	}
	return n
}

func TestExcessIsCutAndTotalsMatch(t *testing.T) {
	c := counter{7: {ListenDrops: 100}}
	l := New(c.read)
	l.Start(7, 1)
	// 10 real drops, counted as 12 at the listener (two double-counted overflows).
	c[7] = Counters{ListenDrops: 110}
	got := sum(collect(t, l, drop(7, 5, "accept_queue_full"))) + sum(collect(t, l, drop(7, 7, "accept_queue_full")))
	if got != 10 {
		t.Fatalf("reported %d, the namespace counted 10", got)
	}
	c[7] = Counters{ListenDrops: 113}
	if out := collect(t, l, drop(7, 3, "accept_queue_full")); sum(out) != 3 {
		t.Fatalf("next record: %+v", out)
	}
}

func TestSynQueueDropsFollowTheCounter(t *testing.T) {
	c := counter{7: {}}
	l := New(c.read)
	l.Start(7, 1)
	// 8 drops, 5 of them for a full SYN queue, all named by the queues as accept queue drops.
	c[7] = Counters{ListenDrops: 8, ReqQFullDrop: 5}
	out := collect(t, l, drop(7, 8, "accept_queue_full"))
	if len(out) != 2 || out[0].Drop.Reason != "syn_queue_full" || out[0].Drop.Count != 5 ||
		out[1].Drop.Reason != "accept_queue_full" || out[1].Drop.Count != 3 {
		t.Fatalf("split: %+v", out)
	}
	// Named syn_queue_full by the queues, but the counter did not grow: relabelled.
	c[7] = Counters{ListenDrops: 10, ReqQFullDrop: 5}
	out = collect(t, l, drop(7, 2, "syn_queue_full"))
	if len(out) != 1 || out[0].Drop.Reason != "listen_drop" {
		t.Fatalf("relabel: %+v", out)
	}
}

func TestRecordAheadOfCounterIsHeldToIt(t *testing.T) {
	c := counter{7: {}}
	l := New(c.read)
	l.Start(7, 1)
	c[7] = Counters{ListenDrops: 4}
	if out := collect(t, l, drop(7, 6, "listen_drop")); sum(out) != 4 {
		t.Fatalf("count %d, want the namespace's 4", sum(out))
	}
	if out := collect(t, l, drop(7, 1, "listen_drop")); len(out) != 0 {
		t.Fatalf("a record beyond the counter went through: %+v", out)
	}
}

func TestCachedReadingNeverCuts(t *testing.T) {
	c := counter{7: {}}
	reads := 0
	l := New(func(ns, pid uint32) (Counters, bool) { reads++; return c.read(ns, pid) })
	l.Start(7, 1)
	c[7] = Counters{ListenDrops: 2}
	collect(t, l, drop(7, 2, "listen_drop"))
	c[7] = Counters{ListenDrops: 5} // more drops since the cached reading
	if out := collect(t, l, drop(7, 3, "listen_drop")); sum(out) != 3 {
		t.Fatalf("cut on a stale reading: %+v", out)
	}
	before := reads
	l.Tick()
	collect(t, l, drop(7, 0, "listen_drop"))
	if reads != before+1 {
		t.Fatal("no fresh reading after Tick")
	}
}

func TestUnreadableNamespacePassesThrough(t *testing.T) {
	l := New(counter{}.read)
	if out := collect(t, l, drop(9, 5, "listen_drop")); sum(out) != 5 {
		t.Fatal("a namespace whose counters cannot be read must not lose records")
	}
	if out := collect(t, l, &event.Event{Kind: event.KindState}); len(out) != 1 {
		t.Fatal("state records pass")
	}
}

func TestNamespaceFirstSeenLaterCountsFromZero(t *testing.T) {
	// A new namespace (a container started after tcptrace): 9 drops so far,
	// 5 of them for a full SYN queue; the first record carries only 6 yet.
	c := counter{3: {ListenDrops: 9, ReqQFullDrop: 5}}
	l := New(c.read)
	out := collect(t, l, drop(3, 6, "accept_queue_full"))
	if sum(out) != 6 || out[0].Drop.Reason != "syn_queue_full" || out[0].Drop.Count != 5 {
		t.Fatalf("first record: %+v", out)
	}
	// The drops the first record did not carry yet are not cut later.
	if out := collect(t, l, drop(3, 3, "accept_queue_full")); sum(out) != 3 {
		t.Fatalf("second record: %+v", out)
	}
}

func TestParseCounters(t *testing.T) {
	in := "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop\nTcpExt: 0 5 7 3\nIpExt: InNoRoutes\nIpExt: 0\n"
	c, ok := parseCounters(bufio.NewScanner(strings.NewReader(in)))
	if !ok || c.ListenDrops != 7 || c.ReqQFullDrop != 3 {
		t.Fatalf("got %+v %v", c, ok)
	}
}

// SYNs seen dropped one by one (fentry/kprobe paths) are named by the queues
// at the drop; the namespace's TCPReqQFullDrop has the last word, read fresh
// before any renaming.
func TestSeenSynDropsFollowTheCounter(t *testing.T) {
	c := counter{7: {}}
	l := New(c.read)
	l.Start(7, 1)
	syn := func(reason string) *event.Event {
		e := drop(7, 1, reason)
		e.Drop.ClientKnown = true
		return e
	}
	c[7] = Counters{ListenDrops: 1, ReqQFullDrop: 1}
	if out := collect(t, l, syn("syn_queue_full")); len(out) != 1 || out[0].Drop.Reason != "syn_queue_full" {
		t.Fatalf("first SYN: %+v", out)
	}
	// Within the same tick, a second one: the cached reading has no SYN-queue
	// room left, so it is read again, and the kernel counted this one too.
	c[7] = Counters{ListenDrops: 2, ReqQFullDrop: 2}
	if out := collect(t, l, syn("syn_queue_full")); len(out) != 1 || out[0].Drop.Reason != "syn_queue_full" {
		t.Fatalf("second SYN: %+v", out)
	}
	// A third the queues called syn_queue_full, which the kernel did not.
	c[7] = Counters{ListenDrops: 3, ReqQFullDrop: 2}
	out := collect(t, l, syn("syn_queue_full"))
	if len(out) != 1 || out[0].Drop.Reason != "listen_drop" || !out[0].Drop.ClientKnown {
		t.Fatalf("third SYN: %+v", out)
	}
	// Other per-packet reasons pass untouched and count against ListenDrops.
	c[7] = Counters{ListenDrops: 4, ReqQFullDrop: 2}
	if out := collect(t, l, syn("accept_queue_full")); len(out) != 1 || out[0].Drop.Reason != "accept_queue_full" {
		t.Fatalf("accept-queue SYN: %+v", out)
	}
}
