// Package listendrops keeps the drop counts tcptrace reports true to each
// network namespace's own counters (ListenDrops, TCPReqQFullDrop in
// /proc/net/netstat).
//
// Counts come from each listener's drop counter, sk_drops, which grows with
// every listen drop but, on some paths, also with a packet the listener
// discards (a final ACK that overflows the accept queue bumps it twice; unseen
// where neither fentry, kprobes nor kfree_skb's TCP_LISTEN_OVERFLOW (6.15+)
// show the packet). So per
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

// Counters are a namespace's TcpExt counters that drops are checked against.
type Counters struct {
	ListenDrops  uint64 // every listen drop
	ReqQFullDrop uint64 // SYNs dropped for a full SYN queue (syncookies off)
}

// Reader reads the counters of the network namespace netns through process
// pid (which must live in it).
type Reader func(netns, pid uint32) (Counters, bool)

// Limiter tracks each namespace's reported count against its counter.
type Limiter struct {
	read Reader
	ns   map[uint32]*budget
}

type budget struct {
	base, last Counters // when counting started; the latest reading, good until Tick
	fresh      bool
	reported   uint64 // drops reported
	reportedQ  uint64 // of which as syn_queue_full
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

// Apply checks a drop record against its namespace's counters and emits what
// stands: its count cut to what ListenDrops allows, and a counted record (or
// a SYN seen dropped, named by the queues) split or renamed so that exactly
// as many drops are named syn_queue_full as the namespace's TCPReqQFullDrop
// grew by (the listener's queues, read a moment apart from the drop, can
// mislead). Other records pass through emit unchanged.
func (l *Limiter) Apply(e *event.Event, emit func(*event.Event) error) error {
	if e.Kind != event.KindDrop || e.PID == 0 || e.Drop.Other {
		return emit(e)
	}
	b := l.ns[e.NetNS]
	synQ := e.Drop.Reason == "syn_queue_full"
	if b == nil || !b.fresh || e.Drop.Count > b.allowed() || (synQ && e.Drop.Count > b.allowedQ()) {
		// Read again: the first time, once per tick, and before any cut or
		// renaming, so neither happens on a stale reading.
		now, ok := l.read(e.NetNS, e.PID)
		if !ok {
			return emit(e) // no way to check: report what the listener counted
		}
		if b == nil {
			// A namespace that had no listener when tracing started is, but
			// for rare cases, new since: its counters started at zero. (For
			// an older one, this only means nothing is cut.)
			b = &budget{}
			l.ns[e.NetNS] = b
		}
		b.last, b.fresh = now, true
	}
	e.Drop.Count = min(e.Drop.Count, b.allowed())
	if e.Drop.Count == 0 {
		return nil
	}
	b.reported += e.Drop.Count
	if e.Drop.ClientKnown && !synQ {
		return emit(e) // a packet named otherwise: not a SYN-queue drop
	}
	q := min(e.Drop.Count, b.allowedQ())
	b.reportedQ += q
	rest := e.Drop.Count - q
	if rest > 0 && e.Drop.Reason == "syn_queue_full" {
		e.Drop.Reason = "listen_drop" // its queues said so, its namespace says otherwise
		if e.Drop.Backlog > e.Drop.MaxBacklog {
			e.Drop.Reason = "accept_queue_full"
		}
	}
	if q > 0 {
		sq := *e
		sq.Drop.Count, sq.Drop.Reason = q, "syn_queue_full"
		if err := emit(&sq); err != nil {
			return err
		}
	}
	if rest == 0 {
		return nil
	}
	e.Drop.Count = rest
	return emit(e)
}

func (b *budget) allowed() uint64 {
	return b.last.ListenDrops - min(b.last.ListenDrops, b.base.ListenDrops+b.reported)
}

func (b *budget) allowedQ() uint64 {
	return b.last.ReqQFullDrop - min(b.last.ReqQFullDrop, b.base.ReqQFullDrop+b.reportedQ)
}

// Tick ends a drain: the next record of each namespace reads its counter anew.
func (l *Limiter) Tick() {
	for _, b := range l.ns {
		b.fresh = false
	}
}

// ProcReader reads /proc/PID/net/netstat after checking that PID lives in
// netns (its /proc/PID/ns/net inode).
func ProcReader(netns, pid uint32) (Counters, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil || uint32(st.Ino) != netns {
		return Counters{}, false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/netstat", pid))
	if err != nil {
		return Counters{}, false
	}
	defer f.Close()
	return parseCounters(bufio.NewScanner(f))
}

func parseCounters(sc *bufio.Scanner) (Counters, bool) {
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
		var c Counters
		found := 0
		for i, n := range names {
			if i >= len(fields) {
				break
			}
			v, err := strconv.ParseUint(fields[i], 10, 64)
			switch {
			case err != nil:
			case n == "ListenDrops":
				c.ListenDrops = v
				found++
			case n == "TCPReqQFullDrop":
				c.ReqQFullDrop = v
			}
		}
		return c, found == 1
	}
	return Counters{}, false
}
