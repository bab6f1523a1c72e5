package tracer

import (
	"testing"
	"time"
)

func TestPacerWaits(t *testing.T) {
	var p pacer
	next := time.Now().Add(time.Second)

	// Nothing read yet: the whole interval.
	if got := p.wakeBy(next, 0); !got.Equal(next) {
		t.Fatalf("idle wait ends %v, want the interval's end %v", got, next)
	}
	// Records read since that wait began: no longer than maxWait.
	if got := time.Until(p.wakeBy(next, 10)); got > maxWait || got <= 0 {
		t.Fatalf("wait while records flow lasts %v, want (0, %v]", got, maxWait)
	}
	// None since: the whole interval again.
	if got := p.wakeBy(next, 10); !got.Equal(next) {
		t.Fatalf("wait after records stopped ends %v, want %v", got, next)
	}
	// An interval that ends sooner than maxWait is kept.
	soon := time.Now().Add(time.Millisecond)
	if got := p.wakeBy(soon, 20); !got.Equal(soon) {
		t.Fatalf("wait ends %v, want the interval's end %v", got, soon)
	}
}

func TestPacerYields(t *testing.T) {
	var p pacer
	p.yield(0)
	if !p.yieldedAt.IsZero() {
		t.Fatal("yielded with no records read")
	}
	p.yield(5)
	if p.yielded != 5 || p.yieldedAt.IsZero() {
		t.Fatalf("no yield after records were read: %+v", p)
	}
	at := p.yieldedAt
	p.yield(9)
	if p.yielded != 5 || !p.yieldedAt.Equal(at) {
		t.Fatalf("yielded again within maxWait: %+v", p)
	}
}

func TestWalkerPaces(t *testing.T) {
	w := walker{last: time.Now().Add(-2 * time.Second)}
	if !w.due(time.Second) {
		t.Fatal("a walk last begun 2 s ago is not due every 1 s")
	}
	if w.due(time.Second) {
		t.Fatal("due again at once")
	}
	// A walk that took 200 ms waits 20 times that: 4 s, not 1 s.
	w = walker{last: time.Now().Add(-2 * time.Second), cost: 200 * time.Millisecond}
	if w.due(time.Second) {
		t.Fatal("a walk costing 200 ms is due 2 s after the last, want 4 s")
	}
	w.last = time.Now().Add(-5 * time.Second)
	if !w.due(time.Second) {
		t.Fatal("a walk costing 200 ms is not due 5 s after the last")
	}
	w.done()
	if w.cost < 0 || w.cost > time.Second {
		t.Fatalf("done recorded a cost of %v for a walk just begun", w.cost)
	}
}
