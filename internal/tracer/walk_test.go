package tracer

import (
	"slices"

	"github.com/cilium/ebpf"
	"testing"
)

// The listener rows map is made only with the program that fills it: every
// other candidate's collection would otherwise make a 16384-row array of its
// own (see ownMaps).
func TestOwnMapsOnlyWithTheirPrograms(t *testing.T) {
	spec, err := loadTcptrace()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range ownMaps {
		if spec.Maps[name] == nil {
			t.Fatalf("map %s missing from the BPF object", name)
		}
		var users []string
		for p := range spec.Programs {
			if usesMap(map[string]*ebpf.ProgramSpec{p: spec.Programs[p]}, name) {
				users = append(users, p)
			}
		}
		if !slices.Equal(users, []string{"poll_listeners_run"}) {
			t.Errorf("map %s is used by %v, want only poll_listeners_run", name, users)
		}
	}
	if usesMap(spec.Programs, "no_such_map") {
		t.Error("usesMap found a map no program uses")
	}
}
