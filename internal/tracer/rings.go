package tracer

import (
	"errors"
	"fmt"
	"math/bits"
	"os"

	"github.com/cilium/ebpf"
)

// The two ways records reach Go, as -v names them.
const (
	ringFeature = "ring buffer"
	// CPURings is one ring buffer per CPU, merged by time in Go: a ring
	// shared by all CPUs moves its lock and positions between them at every
	// record. Needs ring buffers inside a map (Linux 5.10).
	CPURings   = "one per CPU"
	sharedRing = "one shared"
)

// minRingPerCPU is the least ring a CPU gets, however small its share of
// --ring-size on a machine with many CPUs: a burst often comes from one.
const minRingPerCPU = 1 << 20

// ringPerCPU is each CPU's ring for a total of total bytes over cpus CPUs:
// its share rounded up to a power of two, at least a page and at least
// min(total, minRingPerCPU).
func ringPerCPU(total uint32, cpus int) uint32 {
	n := max(total/uint32(cpus), min(total, minRingPerCPU), uint32(os.Getpagesize()))
	if n&(n-1) != 0 {
		n = 1 << bits.Len32(n)
	}
	return n
}

// setupRings sizes the ring buffers in spec for opts and, unless left out,
// makes one ring per CPU (kept in t.rings and in spec's cpu_events for the
// maps collection). Where the kernel refuses it, records go through the
// one shared ring (events), and cpu_events becomes a map every kernel
// takes: the programs' code for it is dead then (cfg.cpu_rings 0). It
// returns what each ring's writer wakes the reader at.
func (t *Tracer) setupRings(spec *ebpf.CollectionSpec, opts *Options, cfg *tcptraceConfig) (wakeup uint32) {
	outerSpec := spec.Maps["cpu_events"]
	var why error = errors.New("left out for a test")
	if opts.Without != CPURings {
		why = t.makeCPURings(outerSpec, opts.RingBytes)
	}
	if why == nil {
		cfg.CpuRings = 1
		spec.Maps["events"].MaxEntries = uint32(os.Getpagesize())
		size := t.rings[0].MaxEntries()
		t.hooks = append(t.hooks,
			Hook{Feature: ringFeature, Name: fmt.Sprintf("%s (%d of %s)", CPURings, len(t.rings), sizeText(size)), Active: true},
			Hook{Feature: ringFeature, Name: sharedRing})
		return size / 16
	}
	outerSpec.MaxEntries = 1
	outerSpec.InnerMap = &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	spec.Maps["events"].MaxEntries = opts.RingBytes
	t.hooks = append(t.hooks,
		Hook{Feature: ringFeature, Name: CPURings, Err: why},
		Hook{Feature: ringFeature, Name: fmt.Sprintf("%s (%s)", sharedRing, sizeText(opts.RingBytes)), Active: true})
	return opts.RingBytes / 16
}

// makeCPURings makes the per-CPU rings and sets outer (cpu_events) to hold
// them.
func (t *Tracer) makeCPURings(outer *ebpf.MapSpec, total uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	size := ringPerCPU(total, cpus)
	inner := outer.InnerMap.Copy()
	inner.MaxEntries = size
	outer.InnerMap.MaxEntries = size
	outer.MaxEntries = uint32(cpus)
	outer.Contents = nil
	for i := range cpus {
		m, err := ebpf.NewMap(inner)
		if err != nil {
			t.closeRings()
			return fmt.Errorf("ring buffer %d of %d: %w", i+1, cpus, err)
		}
		t.rings = append(t.rings, m)
		outer.Contents = append(outer.Contents, ebpf.MapKV{Key: uint32(i), Value: m})
	}
	// Whether the kernel takes ring buffers inside a map shows here.
	probe, err := ebpf.NewMap(outer)
	if err != nil {
		t.closeRings()
		outer.Contents = nil
		return fmt.Errorf("ring buffers in a map: %w", err)
	}
	probe.Close()
	return nil
}

func (t *Tracer) closeRings() {
	for _, m := range t.rings {
		m.Close()
	}
	t.rings = nil
}

func sizeText(n uint32) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dK", n>>10)
	}
	return fmt.Sprint(n)
}
