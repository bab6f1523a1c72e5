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
