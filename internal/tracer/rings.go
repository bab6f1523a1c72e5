package tracer

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"

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
// makes one ring per online CPU and a spare for the offline ones (kept in
// t.rings and in spec's cpu_events for the maps collection). Where the
// kernel refuses it, records go through the one shared ring (events), and
// cpu_events becomes a map every kernel takes: the programs' code for it is
// dead then (cfg.cpu_rings 0). It returns what each ring's writer wakes the
// reader at.
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
		name := fmt.Sprintf("%s (%d of %s)", CPURings, len(t.rings), sizeText(size))
		if t.spare != nil {
			name = fmt.Sprintf("%s (%d of %s, one of them shared by %s)", CPURings, len(t.rings), sizeText(size), OfflineText(t.offline))
		}
		t.hooks = append(t.hooks,
			Hook{Feature: ringFeature, Name: name, Active: true},
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
// them. CPUs that are possible but offline at the start (hot-plug slots of a
// VM, SMT siblings turned off) share one spare ring: a ring per possible CPU
// would be 128M on a 4-vCPU VM with 128 possible CPUs; the spare still takes a
// CPU brought online while tracing.
func (t *Tracer) makeCPURings(outer *ebpf.MapSpec, total uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	online, err := onlineCPUs(cpus)
	if err != nil {
		return err
	}
	slots, n := ringSlots(online)
	if n == 0 {
		return fmt.Errorf("%s: no CPU online", onlinePath)
	}
	rings := n
	if n < cpus {
		rings++ // the spare
	}
	size := ringPerCPU(total, n)
	inner := outer.InnerMap.Copy()
	inner.MaxEntries = size
	outer.InnerMap.MaxEntries = size
	outer.MaxEntries = uint32(cpus)
	outer.Contents = nil
	for i := range rings {
		m, err := ebpf.NewMap(inner)
		if err != nil {
			t.closeRings()
			return fmt.Errorf("ring buffer %d of %d: %w", i+1, rings, err)
		}
		t.rings = append(t.rings, m)
	}
	if rings > n {
		t.spare = t.rings[n]
		t.offline = cpus - n
	}
	for cpu, r := range slots {
		outer.Contents = append(outer.Contents, ebpf.MapKV{Key: uint32(cpu), Value: t.rings[r]})
	}
	// Whether the kernel takes ring buffers inside a map shows here.
	probe, err := ebpf.NewMap(outer)
	if err != nil {
		t.closeRings()
		t.offline = 0
		outer.Contents = nil
		return fmt.Errorf("ring buffers in a map: %w", err)
	}
	probe.Close()
	return nil
}

// ringSlots says which ring each possible CPU writes to (slots[cpu]), given
// which are online: the n online CPUs have rings 0..n-1, in order, and the
// offline ones, if any, share ring n.
func ringSlots(online []bool) (slots []int, n int) {
	slots = make([]int, len(online))
	for cpu, on := range online {
		if on {
			slots[cpu] = n
			n++
		}
	}
	for cpu, on := range online {
		if !on {
			slots[cpu] = n
		}
	}
	return slots, n
}

// onlineCPUs reads which of the cpus possible CPUs are online; where the
// kernel does not say, all are.
func onlineCPUs(cpus int) ([]bool, error) {
	online := make([]bool, cpus)
	b, err := os.ReadFile(onlinePath)
	if errors.Is(err, os.ErrNotExist) {
		for i := range online {
			online[i] = true
		}
		return online, nil
	} else if err != nil {
		return nil, err
	}
	if err := parseCPUList(strings.TrimSpace(string(b)), online); err != nil {
		return nil, fmt.Errorf("%s: %w", onlinePath, err)
	}
	return online, nil
}

const onlinePath = "/sys/devices/system/cpu/online"

// parseCPUList sets set[cpu] for each CPU in list, the kernel's format
// ("0-3,5,7-8"); CPUs past set's end are left out.
func parseCPUList(list string, set []bool) error {
	if list == "" {
		return nil
	}
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := strconv.Atoi(lo)
		last := first
		if err == nil && isRange {
			last, err = strconv.Atoi(hi)
		}
		if err != nil || first < 0 || last < first {
			return fmt.Errorf("bad CPU list %q", list)
		}
		for cpu := first; cpu <= last && cpu < len(set); cpu++ {
			set[cpu] = true
		}
	}
	return nil
}

// OfflineText names n CPUs offline at the start, for -v.
func OfflineText(n int) string {
	if n == 1 {
		return "the CPU offline at the start"
	}
	return fmt.Sprintf("the %d CPUs offline at the start", n)
}

// OfflineCPUs is how many possible CPUs were offline at the start and share
// one spare ring (Stats.Spare counts its records).
func (t *Tracer) OfflineCPUs() int { return t.offline }

func (t *Tracer) closeRings() {
	for _, m := range t.rings {
		m.Close()
	}
	t.rings, t.spare = nil, nil // offline stays, for -v's last lines after Close
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
