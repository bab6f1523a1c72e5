package tracer

import (
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/cilium/ebpf/ringbuf"
)

// fakeRing holds records stamped stamps[i], read in that order.
type fakeRing struct {
	stamps []uint64
	err    error // returned once the stamps run out
}

func (f *fakeRing) next(rec *ringbuf.Record) (bool, error) {
	if len(f.stamps) == 0 {
		return false, f.err
	}
	rec.RawSample = binary.NativeEndian.AppendUint64(rec.RawSample[:0], f.stamps[0])
	f.stamps = f.stamps[1:]
	return true, nil
}

func (f *fakeRing) waiting() bool { return len(f.stamps) > 0 || f.err != nil }

func drained(t *testing.T, m *merger, cutoff uint64) []uint64 {
	t.Helper()
	var got []uint64
	if err := m.drain(cutoff, func(b []byte) error {
		got = append(got, recordStamp(b))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestMergeInTimeOrder(t *testing.T) {
	a := &fakeRing{stamps: []uint64{1, 4, 5, 9}}
	b := &fakeRing{stamps: []uint64{2, 3, 8}}
	c := &fakeRing{}
	m := newMerger([]source{a, b, c})
	if got, want := drained(t, m, all), []uint64{1, 2, 3, 4, 5, 8, 9}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if m.held() {
		t.Fatal("held records after a drain of all")
	}
}

// A ring's own order is kept even where its stamps are not (a change in a
// softirq nested in a program writes first, stamped later).
func TestMergeKeepsRingOrder(t *testing.T) {
	a := &fakeRing{stamps: []uint64{105, 100}}
	b := &fakeRing{stamps: []uint64{102, 110}}
	m := newMerger([]source{a, b})
	if got, want := drained(t, m, all), []uint64{102, 105, 100, 110}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// Records stamped after the cutoff wait for a later drain, and come then in
// order with what arrived meanwhile.
func TestMergeHoldsRecordsAfterCutoff(t *testing.T) {
	a := &fakeRing{stamps: []uint64{1, 7, 8}}
	b := &fakeRing{stamps: []uint64{2, 6}}
	m := newMerger([]source{a, b})
	if got, want := drained(t, m, 5), []uint64{1, 2}; !slices.Equal(got, want) {
		t.Fatalf("first drain: got %v, want %v", got, want)
	}
	if !m.held() {
		t.Fatal("nothing held after a drain that left records stamped after its cutoff")
	}
	b.stamps = append(b.stamps, 9) // written since
	if got, want := drained(t, m, 10), []uint64{6, 7, 8, 9}; !slices.Equal(got, want) {
		t.Fatalf("second drain: got %v, want %v", got, want)
	}
	if m.held() {
		t.Fatal("held records after everything was delivered")
	}
}

func TestMergeErrors(t *testing.T) {
	broken := errors.New("broken ring")
	m := newMerger([]source{&fakeRing{stamps: []uint64{1}}, &fakeRing{err: broken}})
	if err := m.drain(all, func([]byte) error { return nil }); !errors.Is(err, broken) {
		t.Fatalf("a ring's error: got %v", err)
	}
	refused := errors.New("sink full")
	m = newMerger([]source{&fakeRing{stamps: []uint64{1, 2}}})
	n := 0
	err := m.drain(all, func([]byte) error { n++; return refused })
	if !errors.Is(err, refused) || n != 1 {
		t.Fatalf("deliver's error: got %v after %d records", err, n)
	}
}

func TestRingPerCPU(t *testing.T) {
	for _, c := range []struct {
		total uint32
		cpus  int
		want  uint32
	}{
		{8 << 20, 1, 8 << 20},
		{8 << 20, 2, 4 << 20},
		{8 << 20, 6, 2 << 20},  // 1.33M up to a power of two
		{8 << 20, 64, 1 << 20}, // no less than 1M a CPU
		{32 << 20, 3, 16 << 20},
		{4 << 10, 2, 4 << 10}, // a page at least; tests' tiny rings stay tiny
		{512 << 10, 4, 512 << 10},
	} {
		if got := ringPerCPU(c.total, c.cpus); got != c.want {
			t.Errorf("ringPerCPU(%d, %d) = %d, want %d", c.total, c.cpus, got, c.want)
		}
	}
}

// countRing yields n records stamped from, from+step, ...
type countRing struct{ from, step, n uint64 }

func (c *countRing) next(rec *ringbuf.Record) (bool, error) {
	if c.n == 0 {
		return false, nil
	}
	rec.RawSample = binary.NativeEndian.AppendUint64(rec.RawSample[:0], c.from)
	c.from += c.step
	c.n--
	return true, nil
}

func (c *countRing) waiting() bool { return c.n > 0 }

// BenchmarkMerge: the per-record cost of merging two busy rings.
func BenchmarkMerge(b *testing.B) {
	const batch = 1024
	x, y := &countRing{step: 2}, &countRing{step: 2}
	m := newMerger([]source{x, y})
	deliver := func([]byte) error { return nil }
	b.ReportAllocs()
	for i := 0; i < b.N; i += 2 * batch {
		x.from, x.n = uint64(i), batch
		y.from, y.n = uint64(i)+1, batch
		if err := m.drain(all, deliver); err != nil {
			b.Fatal(err)
		}
	}
}
