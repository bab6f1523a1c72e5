package tracer

import (
	"slices"
	"testing"
)

// The state hooks attach last: from then on records pile up in the ring until
// the reader starts, so no other program's load may come between.
func TestStateChangesAttachLast(t *testing.T) {
	for _, opts := range []Options{{}, {EmitDrops: true}, {EmitDrops: true, EmitRetrans: true, EmitResets: true}} {
		tr := &Tracer{reasons: &kernelReasons{names: map[uint32]string{}}}
		fs, err := tr.features(&opts)
		if err != nil {
			t.Fatal(err)
		}
		names := make([]string, len(fs))
		for i, f := range fs {
			names[i] = f.name
		}
		if names[len(names)-1] != "state changes" || slices.Index(names, "state changes") != len(names)-1 {
			t.Errorf("%+v: attach order %q: state changes should come last, once", opts, names)
		}
	}
}

func TestLeaveOut(t *testing.T) {
	mk := func() []feature {
		return []feature{
			{name: "state changes", required: true, candidates: []candidate{{name: "tp_btf/a"}}},
			{name: "dropped clients", candidates: []candidate{{name: "fentry/b"}, {name: "tp_btf/c (x), d"}}},
		}
	}
	fs := mk()
	if !leaveOut(fs, "dropped clients") || fs[1].candidates[0].unusable == nil || fs[1].candidates[1].unusable == nil {
		t.Error("an optional feature: not all its hooks left out")
	}
	fs = mk()
	if !leaveOut(fs, "tp_btf/c (x), d") || fs[1].candidates[0].unusable != nil || fs[1].candidates[1].unusable == nil {
		t.Error("one hook: not that one alone left out")
	}
	fs = mk()
	if leaveOut(fs, "state changes") || fs[0].candidates[0].unusable != nil {
		t.Error("a required feature was left out")
	}
	// One hook of a required feature may go: another may take its place.
	if !leaveOut(mk(), "tp_btf/a") {
		t.Error("a hook of a required feature: refused")
	}
	if leaveOut(mk(), "nothing") {
		t.Error("an unknown name: accepted")
	}
}
