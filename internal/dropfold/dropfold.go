// Package dropfold keeps a SYN flood readable: past a rate, a listener's
// per-packet drop records fold into one summary per second with the exact
// count and the clients dropped most.
package dropfold

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/tcptrace/tcptrace/internal/event"
)

const (
	window     = uint64(1e9) // one second of CLOCK_MONOTONIC
	topClients = 5
)

// Folder counts per-packet drops per listener per second.
type Folder struct {
	limit int
	per   map[uint64]*listener
}

type listener struct {
	start   uint64 // window start
	passed  int    // per-packet records let through in this window
	summary *event.Event
	clients map[netip.Addr]uint64
}

// New lets limit per-packet records per listener per second through.
func New(limit int) *Folder {
	return &Folder{limit: limit, per: map[uint64]*listener{}}
}

// Take reports whether e goes out as is; a folded record is counted into its
// listener's summary instead. Only per-packet drops fold.
func (f *Folder) Take(e *event.Event) bool {
	if e.Kind != event.KindDrop || !e.Drop.ClientKnown {
		return true
	}
	key := e.Sock
	if key == 0 {
		// A drop with no socket known (a packet to a closed port, say): per
		// local port, never equal to a socket's address (kernel pointers).
		key = uint64(e.LPort) | uint64(e.NetNS)<<16
	}
	l := f.per[key]
	if l == nil || e.Mono-l.start >= window {
		if l != nil && l.summary != nil {
			return true // Flush has not run yet; keep order simple: pass it
		}
		l = &listener{start: e.Mono}
		f.per[key] = l
	}
	if l.passed < f.limit {
		l.passed++
		return true
	}
	if l.summary == nil {
		s := *e
		s.Drop.Count = 0
		s.Drop.ClientKnown = false
		l.summary = &s
		l.clients = map[netip.Addr]uint64{}
	}
	l.summary.Drop.Count += e.Drop.Count
	l.summary.Drop.Backlog, l.summary.Drop.SynQueue = e.Drop.Backlog, e.Drop.SynQueue
	l.summary.Time, l.summary.Mono = e.Time, e.Mono
	l.clients[e.RAddr] += e.Drop.Count
	return false
}

// Flush emits the summaries of windows that ended by now (all with force).
func (f *Folder) Flush(now uint64, force bool, emit func(*event.Event) error) error {
	for sock, l := range f.per {
		if !force && now-l.start < window {
			continue
		}
		delete(f.per, sock)
		if l.summary == nil {
			continue
		}
		top := make([]event.ClientCount, 0, len(l.clients))
		for a, n := range l.clients {
			top = append(top, event.ClientCount{Addr: a, Count: n})
		}
		slices.SortFunc(top, func(a, b event.ClientCount) int {
			if c := cmp.Compare(b.Count, a.Count); c != 0 {
				return c
			}
			return a.Addr.Compare(b.Addr)
		})
		l.summary.Drop.TopClients = top[:min(topClients, len(top))]
		if err := emit(l.summary); err != nil {
			return err
		}
	}
	return nil
}
