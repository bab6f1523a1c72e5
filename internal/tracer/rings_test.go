package tracer

import (
	"slices"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	for _, c := range []struct {
		list string
		want []bool
	}{
		{"0-3", []bool{true, true, true, true, false, false}},
		{"0,2,4-5", []bool{true, false, true, false, true, true}},
		{"1", []bool{false, true, false, false, false, false}},
		{"0-1,4-9", []bool{true, true, false, false, true, true}}, // past the possible CPUs: left out
		{"", []bool{false, false, false, false, false, false}},
	} {
		got := make([]bool, 6)
		if err := parseCPUList(c.list, got); err != nil {
			t.Errorf("parseCPUList(%q): %v", c.list, err)
		} else if !slices.Equal(got, c.want) {
			t.Errorf("parseCPUList(%q) = %v, want %v", c.list, got, c.want)
		}
	}
	for _, bad := range []string{"x", "0-", "-1", "3-1", "0,,1", "0-1-2"} {
		if err := parseCPUList(bad, make([]bool, 4)); err == nil {
			t.Errorf("parseCPUList(%q): no error", bad)
		}
	}
}

func TestRingSlots(t *testing.T) {
	for _, c := range []struct {
		online []bool
		slots  []int
		n      int
	}{
		// Every possible CPU online: a ring each, no spare.
		{[]bool{true, true}, []int{0, 1}, 2},
		// A VM with hot-plug slots: 2 online of 6, the other 4 share ring 2.
		{[]bool{true, true, false, false, false, false}, []int{0, 1, 2, 2, 2, 2}, 2},
		// SMT siblings turned off: every other CPU.
		{[]bool{true, false, true, false}, []int{0, 2, 1, 2}, 2},
	} {
		slots, n := ringSlots(c.online)
		if !slices.Equal(slots, c.slots) || n != c.n {
			t.Errorf("ringSlots(%v) = %v, %d; want %v, %d", c.online, slots, n, c.slots, c.n)
		}
	}
}

// The merger counts each ring's records (-v reports the spare ring's).
func TestMergerCountsPerRing(t *testing.T) {
	m := newMerger([]source{&fakeRing{stamps: []uint64{1, 4, 9}}, &fakeRing{stamps: []uint64{2}}})
	if got := drained(t, m, 5); !slices.Equal(got, []uint64{1, 2, 4}) {
		t.Fatalf("drain to 5: %v", got)
	}
	drained(t, m, all)
	if !slices.Equal(m.delivered, []uint64{3, 1}) {
		t.Fatalf("delivered per ring: %v, want [3 1]", m.delivered)
	}
}
