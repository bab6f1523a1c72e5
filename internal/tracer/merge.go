package tracer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// source is one ring buffer as the merge reads it.
type source interface {
	// next reads the ring's next record into rec; false if it has none now.
	next(rec *ringbuf.Record) (bool, error)
	// waiting says whether the ring may hold records (cheap: no system call).
	waiting() bool
}

// ringSource reads a ring without blocking: the merge waits on all rings
// at once (ringWaiter).
type ringSource struct{ rd *ringbuf.Reader }

func newRingSource(m *ebpf.Map) (ringSource, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return ringSource{}, err
	}
	rd.SetDeadline(time.Unix(0, 1)) // long past: never block
	return ringSource{rd}, nil
}

func (s ringSource) next(rec *ringbuf.Record) (bool, error) {
	err := s.rd.ReadInto(rec)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return false, nil
	}
	return false, err
}

func (s ringSource) waiting() bool { return s.rd.AvailableBytes() > 0 }

// merger puts the records of several rings (one per CPU) into one stream in
// time order. Each ring is read in its own order; across rings the record
// stamped first goes first. A drain delivers only records stamped before it
// began: a record of a socket's change is written before that socket's next
// change is stamped (the socket is locked across both), so whatever must
// precede a delivered record is in its ring by then, and goes first. Records
// stamped after wait, at the head of their ring, for the next drain.
type merger struct {
	src    []source
	head   []ringbuf.Record // each ring's next record, read but not delivered
	have   []bool           // head holds one
	stamp  []uint64         // its time stamp
	active []int            // rings that may have a record in this drain
	// delivered counts each ring's records handed to deliver.
	delivered []uint64
}

func newMerger(src []source) *merger {
	n := len(src)
	return &merger{src: src, head: make([]ringbuf.Record, n), have: make([]bool, n),
		stamp: make([]uint64, n), active: make([]int, 0, n), delivered: make([]uint64, n)}
}

// recordStamp is a record's time stamp: every record begins with ts_ns. A
// record too short for one sorts first, for decode to reject.
func recordStamp(b []byte) uint64 {
	if len(b) < 8 {
		return 0
	}
	return binary.NativeEndian.Uint64(b)
}

// held says whether records wait for a later drain.
func (m *merger) held() bool {
	for _, h := range m.have {
		if h {
			return true
		}
	}
	return false
}

// drain delivers every record stamped at or before cutoff (in time order
// across the rings, in ring order within one) and what deliver refuses
// ends it.
func (m *merger) drain(cutoff uint64, deliver func([]byte) error) error {
	m.active = m.active[:0]
	for i, s := range m.src {
		if m.have[i] || s.waiting() {
			m.active = append(m.active, i)
		}
	}
	for len(m.active) > 0 {
		best := -1
		for j := 0; j < len(m.active); j++ {
			i := m.active[j]
			if !m.have[i] {
				ok, err := m.src[i].next(&m.head[i])
				if err != nil {
					return fmt.Errorf("read ring buffer: %w", err)
				}
				if !ok {
					// Empty: what comes now is for the next drain.
					m.active = append(m.active[:j], m.active[j+1:]...)
					j--
					continue
				}
				m.have[i], m.stamp[i] = true, recordStamp(m.head[i].RawSample)
			}
			if m.stamp[i] <= cutoff && (best < 0 || m.stamp[i] < m.stamp[best]) {
				best = i
			}
		}
		if best < 0 {
			return nil // the rest is stamped after cutoff
		}
		m.have[best] = false
		m.delivered[best]++
		if err := deliver(m.head[best].RawSample); err != nil {
			return err
		}
	}
	return nil
}

// all is the cutoff of a final drain, and of a single ring's (nothing to
// merge).
const all = math.MaxUint64

// ringWaiter waits for any of the rings to wake the reader (the kernel side
// wakes it at a byte mark), for a deadline, or for flush.
type ringWaiter struct {
	ep, flushFd int
	evs         []unix.EpollEvent
	flushed     bool
}

func newRingWaiter(rings []*ebpf.Map) (_ *ringWaiter, err error) {
	w := &ringWaiter{ep: -1, flushFd: -1, evs: make([]unix.EpollEvent, len(rings)+1)}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if w.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if w.flushFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	add := func(fd, id int) error {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(id)}
		if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("epoll_ctl: %w", err)
		}
		return nil
	}
	if err := add(w.flushFd, -1); err != nil {
		return nil, err
	}
	for i, m := range rings {
		if err := add(m.FD(), i); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// wait returns when a ring woke the reader, at deadline, or once flush was
// called (true from then on).
func (w *ringWaiter) wait(deadline time.Time) (flushed bool, err error) {
	if w.flushed {
		return true, nil
	}
	// epoll_wait counts whole milliseconds: round up, or a short wait spins.
	msec := int((time.Until(deadline) + time.Millisecond - 1) / time.Millisecond)
	n, err := unix.EpollWait(w.ep, w.evs, max(msec, 0))
	if err != nil && !errors.Is(err, unix.EINTR) {
		return false, fmt.Errorf("epoll_wait: %w", err)
	}
	for _, ev := range w.evs[:max(n, 0)] {
		if ev.Fd == -1 {
			w.flushed = true
		}
	}
	return w.flushed, nil
}

// flush ends the wait under way, and every later one.
func (w *ringWaiter) flush() error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, err := unix.Write(w.flushFd, one[:])
	return err
}

func (w *ringWaiter) close() {
	for _, fd := range []int{w.ep, w.flushFd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
