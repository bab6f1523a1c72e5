package dropfold

import (
	"net/netip"
	"testing"

	"github.com/tcptrace/tcptrace/internal/event"
)

func packet(sock, mono uint64, client string) *event.Event {
	return &event.Event{Kind: event.KindDrop, Sock: sock, Mono: mono, RAddr: netip.MustParseAddr(client),
		Drop: event.Drop{Reason: "accept_queue_full", Count: 1, ClientKnown: true}}
}

func TestFoldKeepsTheExactCount(t *testing.T) {
	f := New(3)
	passed := 0
	for i := 0; i < 100; i++ {
		client := "10.0.0.1"
		if i%4 == 0 {
			client = "10.0.0.2"
		}
		if f.Take(packet(1, uint64(i)*1e6, client)) {
			passed++
		}
	}
	if passed != 3 {
		t.Fatalf("%d records passed, want the limit 3", passed)
	}
	var sums []*event.Event
	f.Flush(2e9, false, func(e *event.Event) error { c := *e; sums = append(sums, &c); return nil })
	if len(sums) != 1 || sums[0].Drop.Count != 97 || sums[0].Drop.ClientKnown {
		t.Fatalf("summary %+v", sums)
	}
	top := sums[0].Drop.TopClients
	if len(top) != 2 || top[0].Addr.String() != "10.0.0.1" || top[0].Count+top[1].Count != 97 {
		t.Fatalf("top clients %+v", top)
	}
}

func TestCountedDropsNeverFold(t *testing.T) {
	f := New(1)
	e := &event.Event{Kind: event.KindDrop, Sock: 1, Drop: event.Drop{Count: 500}}
	for i := 0; i < 5; i++ {
		if !f.Take(e) {
			t.Fatal("a counted drop record was folded")
		}
	}
}

func TestFlushWaitsForTheWindowUnlessForced(t *testing.T) {
	f := New(1)
	f.Take(packet(1, 0, "10.0.0.1"))
	f.Take(packet(1, 1, "10.0.0.1"))
	n := 0
	f.Flush(5e8, false, func(*event.Event) error { n++; return nil })
	if n != 0 {
		t.Fatal("flushed an open window")
	}
	f.Flush(5e8, true, func(*event.Event) error { n++; return nil })
	if n != 1 {
		t.Fatal("forced flush lost the summary")
	}
}
