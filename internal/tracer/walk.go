package tracer

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// mapWalk is one of the tracer's walks over a BPF map: an iterator, or where
// the kernel refuses map iterators a program that walks the map with
// bpf_for_each_map_elem, run on demand (BPF_PROG_TEST_RUN); its return value
// is the number of rows it left in rows.
type mapWalk struct {
	iter *link.Iter
	prog *ebpf.Program
	rows *ebpf.Map
}

// walkRunName names the run-on-demand walks in -v.
const walkRunName = "raw_tp/bpf_for_each_map_elem (run on demand)"

// ownMaps are the maps only some candidates' programs use: made with those
// programs, not with the shared maps.
var ownMaps = []string{"listener_rows"}

// usesMap reports whether any of progs refers to the map name.
func usesMap(progs map[string]*ebpf.ProgramSpec, name string) bool {
	for _, p := range progs {
		for _, ins := range p.Instructions {
			if ins.IsLoadFromMap() && ins.Reference() == name {
				return true
			}
		}
	}
	return false
}

// mapIter attaches the iterator of a walk over the map named m; then after
// (if any) is done and w holds it.
func (t *Tracer) mapIter(w *mapWalk, m string, after func() error) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) {
		it, err := link.AttachIter(link.IterOptions{Program: p, Map: t.maps.Maps[m]})
		if err != nil {
			return nil, err
		}
		if after != nil {
			if err := after(); err != nil {
				it.Close()
				return nil, err
			}
		}
		t.iterMu.Lock()
		w.iter = it
		t.iterMu.Unlock()
		return it, nil
	}
}

// walkRun "attaches" a program of a run-on-demand walk: one run proves the
// kernel lets it run, then after (if any) is done and w holds it. Its link
// only takes it out of w when closed.
func (t *Tracer) walkRun(w *mapWalk, after func() error) func(*ebpf.Program) (link.Link, error) {
	return func(p *ebpf.Program) (link.Link, error) {
		if _, err := p.Run(&ebpf.RunOptions{}); err != nil {
			return nil, fmt.Errorf("run %s: %w", p, err)
		}
		if after != nil {
			if err := after(); err != nil {
				return nil, err
			}
		}
		t.iterMu.Lock()
		w.prog = p
		t.iterMu.Unlock()
		return &onDemand{stop: func() {
			t.iterMu.Lock()
			w.prog = nil
			t.iterMu.Unlock()
		}}, nil
	}
}

// onDemand is the link of a program the tracer runs itself: nothing is
// attached, and Close stops the runs. (Only Close is ever called on it.)
type onDemand struct {
	link.Link
	stop func()
}

func (o *onDemand) Close() error {
	o.stop()
	return nil
}

// keepClosed lets the state program leave closed sockets' entries to the
// sweep; set only once a sweep is in place.
func (t *Tracer) keepClosed() error {
	if err := t.maps.Variables["keep_closed"].Set(uint8(1)); err != nil {
		return fmt.Errorf("set keep_closed: %w", err)
	}
	return nil
}

// readWalk runs w once, under iterMu (Detach clears w under the same lock),
// and hands each fixed-size row to fn; fn nil only runs it.
func (t *Tracer) readWalk(w *mapWalk, missing error, what string, size int, fn func([]byte)) error {
	t.iterMu.Lock()
	defer t.iterMu.Unlock()
	switch {
	case w.iter != nil:
		return readIterator(w.iter, what, size, fn)
	case w.prog == nil:
		return missing
	}
	n, err := w.prog.Run(&ebpf.RunOptions{})
	if err != nil {
		return fmt.Errorf("run %s: %w", what, err)
	}
	if fn == nil || w.rows == nil {
		return nil
	}
	row := make([]byte, size)
	for i := range n {
		if err := w.rows.Lookup(i, row); err != nil {
			return fmt.Errorf("read %s row %d: %w", what, i, err)
		}
		fn(row)
	}
	return nil
}
