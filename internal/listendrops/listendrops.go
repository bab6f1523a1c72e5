// Package listendrops keeps the drop counts tcptrace reports true to each
// network namespace's own ListenDrops counter (/proc/net/netstat).
//
// Counts come from each listener's drop counter, sk_drops, which grows with
// every listen drop but, on some paths, also with a packet the listener
// discards (a final ACK that overflows the accept queue bumps it twice on
// kernels before 6.15, where tcptrace cannot see the packet). So per
// namespace, the counts reported so far never exceed the growth of its
// ListenDrops: excess is cut, and once drops stop the two are equal.
package listendrops

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/tcptrace/tcptrace/internal/event"
)

// Reader reads ListenDrops of the network namespace netns through process
// pid (which must live in it).
type Reader func(netns, pid uint32) (uint64, bool)

// Limiter tracks each namespace's reported count against its counter.
type Limiter struct {
	read Reader
	ns   map[uint32]*budget
}

type budget struct {
	base     uint64 // ListenDrops when counting started
	reported uint64
	last     uint64 // the latest reading, good until Tick
	fresh    bool
}

// New returns a Limiter reading counters with read (ProcReader in production).
func New(read Reader) *Limiter {
	return &Limiter{read: read, ns: map[uint32]*budget{}}
}

// Start sets a namespace's starting point: its ListenDrops before any drop
// tcptrace will report (read at start, beside the listener snapshot).
func (l *Limiter) Start(netns, pid uint32) {
	if _, ok := l.ns[netns]; ok {
		return
	}
	if v, ok := l.read(netns, pid); ok {
		l.ns[netns] = &budget{base: v, last: v}
	}
}

// Limit cuts a drop record's count to what its namespace's counter allows;
// false means nothing is left to report.
func (l *Limiter) Limit(e *event.Event) bool {
	if e.Kind != event.KindDrop || e.PID == 0 {
		return true
	}
	b := l.ns[e.NetNS]
	if b == nil || !b.fresh || e.Drop.Count > b.allowed() {
		// Read again: the first time, once per tick, and before any cut, so
		// nothing is cut on a stale reading.
		now, ok := l.read(e.NetNS, e.PID)
		if !ok {
			return true // no way to check: report what the listener counted
		}
		if b == nil {
			// A namespace first seen now: its counter already holds this record.
			b = &budget{base: now - min(now, e.Drop.Count)}
			l.ns[e.NetNS] = b
		}
		b.last, b.fresh = now, true
	}
	e.Drop.Count = min(e.Drop.Count, b.allowed())
	b.reported += e.Drop.Count
	return e.Drop.Count > 0
}

func (b *budget) allowed() uint64 { return b.last - min(b.last, b.base+b.reported) }

// Tick ends a drain: the next record of each namespace reads its counter anew.
func (l *Limiter) Tick() {
	for _, b := range l.ns {
		b.fresh = false
	}
}

// ProcReader reads /proc/PID/net/netstat after checking that PID lives in
// netns (its /proc/PID/ns/net inode).
func ProcReader(netns, pid uint32) (uint64, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil || uint32(st.Ino) != netns {
		return 0, false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/netstat", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	return parseListenDrops(bufio.NewScanner(f))
}

func parseListenDrops(sc *bufio.Scanner) (uint64, bool) {
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "ListenDrops" && i < len(fields) {
				v, err := strconv.ParseUint(fields[i], 10, 64)
				return v, err == nil
			}
		}
		return 0, false
	}
	return 0, false
}
