package tracer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/event"
)

// Sink receives the stream in order. The *event.Event is reused for the
// next record: copy what must outlive the call.
type Sink interface {
	Record(*event.Event) error
	// Idle runs after every drain of the ring buffer, at least once per
	// drain interval: the place to flush buffered output.
	Idle() error
}

// Stats counts what a run delivered and what the kernel could not write.
type Stats struct {
	Events uint64
	Lost   uint64
	// Nested: state changes the kernel skipped the state program for (a
	// softirq nested in it), and how many of those the catch program
	// recorded; the rest are in Lost.
	Nested, Caught uint64
	// Gaps: sockets whose recorded history skips a state (a change no
	// program saw, whether or not the kernel counted the skip).
	Gaps uint64
	// Sweeps: walks of the closed sockets' entries; SweepsSkipped: those
	// left out, no socket having closed since the walk before.
	Sweeps, SweepsSkipped uint64
	// Spare: records through the ring of the CPUs offline at the start
	// (brought online since), where there is one.
	Spare uint64
}

// Run streams records to sink until ctx ends. Then it detaches every hook,
// drains what the ring buffer still holds, emits held events and a final
// lost count, and returns. drainEvery bounds how long a record can wait in
// the ring buffer when the kernel side skips the wake-up.
func (t *Tracer) Run(ctx context.Context, drainEvery time.Duration, sink Sink) (Stats, error) {
	return t.RunPolling(ctx, drainEvery, 0, sink)
}

// RunPolling is Run that also walks the listeners every pollEvery (0: never)
// and once more at the end, so drops counted up to the last moment are sent.
func (t *Tracer) RunPolling(ctx context.Context, drainEvery, pollEvery time.Duration, sink Sink) (st Stats, err error) {
	rings := t.rings
	if len(rings) == 0 {
		rings = []*ebpf.Map{t.maps.Maps["events"]}
	}
	srcs := make([]source, len(rings))
	for i, m := range rings {
		s, err := newRingSource(m)
		if err != nil {
			return st, fmt.Errorf("open ring buffer: %w", err)
		}
		defer s.rd.Close()
		srcs[i] = s
	}
	w, err := newRingWaiter(rings)
	if err != nil {
		return st, fmt.Errorf("wait for ring buffers: %w", err)
	}
	defer w.close()
	merge := newMerger(srcs)
	if t.spare != nil {
		defer func() { st.Spare = merge.delivered[len(srcs)-1] }() // the last ring
	}
	// Records are stamped with Mono's clock. One ring is read in its own
	// order: nothing to wait for.
	cutoff := Mono
	if len(rings) == 1 {
		cutoff = func() uint64 { return all }
	}

	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			// Count the last drops, stop the producers, then drain the rest.
			if pollEvery > 0 {
				t.stopDropWatch()
				t.PollListeners(nil)
			}
			t.Detach()
			w.flush()
		case <-stopped:
		}
	}()

	var (
		ev     event.Event
		offset = WallOffset()
		lost   = lostCounter{t: t}
		polls  = walker{last: time.Now()}
		sweeps = walker{last: time.Now()}
		lates  = walker{last: time.Now()}
		pace   pacer
		// reports paces lost.report while no records flow; reported is
		// st.Events at the last report.
		reports  = walker{last: time.Now()}
		reported uint64
	)
	deliver := func(raw []byte) error {
		if st.Events%yieldEvery == 0 {
			pace.yield(st.Events)
		}
		if err := decode(raw, offset, t.reasons, &ev); err != nil {
			return err
		}
		st.Events++
		return sink.Record(&ev)
	}
	next := time.Now().Add(drainEvery)
	for {
		wake := pace.wakeBy(next, st.Events)
		if soon := time.Now().Add(maxWait); merge.held() && soon.Before(wake) {
			wake = soon // records stamped after the last drain wait for the next
		}
		flushed, err := w.wait(wake)
		if err != nil {
			return st, err
		}
		if flushed {
			if err := merge.drain(all, deliver); err != nil {
				return st, err
			}
			if err := t.emitHeld(offset, sink, &st); err != nil {
				return st, err
			}
			if err := lost.report(sink, &st, true); err != nil {
				return st, err
			}
			return st, sink.Idle()
		}
		if err := merge.drain(cutoff(), deliver); err != nil {
			return st, err
		}
		pace.yield(st.Events)
		if time.Until(next) >= time.Millisecond {
			continue
		}
		if pollEvery > 0 && polls.due(pollEvery) {
			err := t.PollListeners(nil)
			if polls.done(); err != nil && !errors.Is(err, ErrNoListenerWalk) {
				return st, err
			}
		}
		if lates.due(lateEvery) {
			err := t.SendLate()
			if lates.done(); err != nil && !errors.Is(err, ErrNoLateWalk) {
				return st, err
			}
		}
		if sweeps.due(sweepEvery) {
			walked, err := t.SweepClosed()
			if sweeps.done(); err != nil && !errors.Is(err, ErrNoSweep) {
				return st, err
			}
			if walked {
				st.Sweeps++
			} else {
				st.SweepsSkipped++
			}
		}
		// Losses and gaps come with records: while none flow, a look
		// every reportEvery is enough (each is a few bpf() calls).
		if st.Events != reported || reports.due(reportEvery) {
			if err := lost.report(sink, &st, false); err != nil {
				return st, err
			}
			reports.done()
			reported = st.Events
		}
		if err := sink.Idle(); err != nil {
			return st, err
		}
		offset = WallOffset()
		next = time.Now().Add(drainEvery)
	}
}

// pacer keeps the reading goroutine on good terms with the Go runtime while
// records flow. The goroutine blocks in epoll_wait, a system call, and
// otherwise never passes through the scheduler; to the runtime's monitor
// thread that looks like a goroutine stuck for good: after 10 ms (of one
// wait, or of one scheduling slice) it takes the P away and goes back to
// polling every 20 us, which cost a fifth of the tracer's CPU in a
// connection storm. So while records flow no wait lasts that long and the
// goroutine yields every few milliseconds. When none flow it waits the full
// drain interval: waking more often would cost more than the monitor does.
type pacer struct {
	waited, yielded uint64 // events read when the last wait began, at the last yield
	yieldedAt       time.Time
}

// lateEvery is how often the held events are walked for those no change or
// exit sent (a connect() that blocks): one goes out at most this much after
// it is 100 ms old.
const lateEvery = 250 * time.Millisecond

// sweepEvery is how often closed sockets' entries are swept (those closed
// over a second ago go).
const sweepEvery = time.Second

// reportEvery is how often lost records and gaps are looked for while no
// records flow (while they do, at every drain).
const reportEvery = 250 * time.Millisecond

// walker paces a periodic walk (an iterator run): one that costs more waits
// longer, so it takes at most 5% of a CPU.
type walker struct {
	last time.Time     // when the last walk began
	cost time.Duration // what it took
}

// due says whether a walk meant to run every `every` is due now; if so, it
// begins.
func (w *walker) due(every time.Duration) bool {
	if time.Since(w.last) < max(every, 20*w.cost) {
		return false
	}
	w.last = time.Now()
	return true
}

// done ends the walk that due began.
func (w *walker) done() { w.cost = time.Since(w.last) }

const (
	maxWait    = 5 * time.Millisecond
	yieldEvery = 1024 // records between looks at the clock for a yield
)

// wakeBy is the deadline of the next wait for records: next, or sooner if
// records were read since the last wait began.
func (p *pacer) wakeBy(next time.Time, events uint64) time.Time {
	flowing := events != p.waited
	p.waited = events
	if soon := time.Now().Add(maxWait); flowing && soon.Before(next) {
		return soon
	}
	return next
}

// yield passes through the scheduler if records were read since the last
// pass and it was maxWait ago. (Gosched wakes another thread to look for
// work: not more often than needed.)
func (p *pacer) yield(events uint64) {
	if events == p.yielded {
		return
	}
	if now := time.Now(); now.Sub(p.yieldedAt) >= maxWait {
		runtime.Gosched()
		p.yielded, p.yieldedAt = events, now
	}
}

// emitHeld sends the SYN_SENT events still waiting for their local port:
// at exit they go out as the kernel had them rather than not at all.
func (t *Tracer) emitHeld(offset int64, sink Sink, st *Stats) error {
	var (
		key uint64
		raw tcptraceEvent
		ev  event.Event
	)
	it := t.maps.Maps["pending_connects"].Iterate()
	for it.Next(&key, &raw) {
		if err := decode(unsafe.Slice((*byte)(unsafe.Pointer(&raw)), rawEventSize), offset, t.reasons, &ev); err != nil {
			return err
		}
		st.Events++
		if err := sink.Record(&ev); err != nil {
			return err
		}
	}
	return it.Err()
}

// lostCounter turns the kernel's per-CPU count of failed ring-buffer writes
// into lost records in the stream.
type lostCounter struct {
	t      *Tracer
	perCPU []uint64
	nest   []tcptraceStateNest
	seen   uint64
	misses uint64 // the state program's recursion misses, last read
	gaps   uint64 // sockets with a gap, as last reported
}

// report sends a lost record for what was lost since the last one. final
// is the reading after Detach, when no program runs any more.
func (l *lostCounter) report(sink Sink, st *Stats, final bool) error {
	if err := l.reportGaps(sink, st); err != nil {
		return err
	}
	total, err := l.sum("lost")
	if err != nil {
		return err
	}
	// Runs the kernel skipped because the state program was already running
	// on that CPU (a softirq nested in it) are lost, but for those the
	// catch program recorded. A skip is counted a moment before its
	// record: while programs run, compare the catches with the skips of
	// the previous reading (older by a drain interval), so a record under
	// way is never called lost; the final reading, after Detach, is exact.
	if err := l.t.maps.Maps["nesting"].Lookup(uint32(0), &l.nest); err != nil {
		return fmt.Errorf("read BPF map nesting: %w", err)
	}
	var caught uint64
	for _, n := range l.nest {
		caught += n.Caught
	}
	misses := l.t.stateSkips()
	skipped := l.misses // the previous reading
	if final {
		skipped = misses
	}
	l.misses = misses
	st.Nested, st.Caught = misses, caught
	if skipped >= caught {
		total += skipped - caught
	}
	total += l.t.lossySkips()
	if total <= l.seen {
		return nil
	}
	ev := event.Event{Kind: event.KindLost, Time: time.Now().UnixNano(), Lost: total - l.seen}
	l.seen = total
	st.Lost = total
	return sink.Record(&ev)
}

// sum adds up the per-CPU counter in the BPF map name.
func (l *lostCounter) sum(name string) (uint64, error) {
	if err := l.t.maps.Maps[name].Lookup(uint32(0), &l.perCPU); err != nil {
		return 0, fmt.Errorf("read BPF map %s: %w", name, err)
	}
	var total uint64
	for _, n := range l.perCPU {
		total += n
	}
	return total, nil
}

// reportGaps sends a gaps record for sockets found with a gap since the
// last one.
func (l *lostCounter) reportGaps(sink Sink, st *Stats) error {
	gaps, err := l.sum("gaps")
	if err != nil || gaps <= l.gaps {
		return err
	}
	ev := event.Event{Kind: event.KindGaps, Time: time.Now().UnixNano(), Lost: gaps - l.gaps}
	l.gaps = gaps
	st.Gaps = gaps
	return sink.Record(&ev)
}

// WallOffset converts CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time
// (add it). Run refreshes it on every drain so clock steps do not accumulate.
func WallOffset() int64 {
	var mono, real unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	unix.ClockGettime(unix.CLOCK_REALTIME, &real)
	return real.Nano() - mono.Nano()
}
