// Package closewait ranks the processes that hold sockets in CLOSE_WAIT: the
// peer has closed, the application never called close(). Which PID, how
// many, since when, to which peers.
//
// Each report comes from a scan of every process's socket descriptors (the
// truth now); ages come from the live stream, which dates every entry into
// CLOSE_WAIT exactly. A socket already in CLOSE_WAIT when tcptrace started has
// no exact age: it gets a lower bound instead (its last activity, or the
// start of tcptrace), never an invented number.
package closewait

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Tracker remembers when sockets entered CLOSE_WAIT.
type Tracker struct {
	entered map[uint64]uint64 // sock -> CLOCK_MONOTONIC ns it entered CLOSE_WAIT
	start   uint64            // when tracing started
	// A record was lost or a change went unseen: some socket may have left
	// CLOSE_WAIT without the stream saying so.
	unsure bool
}

// NewTracker starts tracking at start (CLOCK_MONOTONIC ns).
func NewTracker(start uint64) *Tracker {
	return &Tracker{entered: map[uint64]uint64{}, start: start}
}

// Observe takes a record from the stream: it needs the changes into and out
// of CLOSE_WAIT, and the reports of lost records.
func (t *Tracker) Observe(e *event.Event) {
	switch {
	case e.Kind == event.KindLost || e.Kind == event.KindGaps:
		t.unsure = true
	case e.Kind != event.KindState:
	case e.NewState == tcpstate.CloseWait:
		t.entered[e.Sock] = e.Mono
	case e.OldState == tcpstate.CloseWait:
		delete(t.entered, e.Sock)
	}
}

// Age is how long a socket has sat in CLOSE_WAIT: exact when Known, else a
// lower bound.
type Age struct {
	D     time.Duration
	Known bool
}

// AgeOf dates a socket seen in CLOSE_WAIT by a scan at now.
func (t *Tracker) AgeOf(h *owner.Holder, now uint64) Age {
	if at, ok := t.entered[h.Sock]; ok && at <= now {
		return Age{D: time.Duration(now - at), Known: true}
	}
	// It was in CLOSE_WAIT before we looked: at least since tracing started,
	// and at least since its last packet (the FIN came no later than that).
	from := t.start
	if h.LastActive != 0 && h.LastActive < from {
		from = h.LastActive
	}
	if from > now {
		return Age{}
	}
	return Age{D: time.Duration(now - from)}
}

// Forget drops sockets no longer in CLOSE_WAIT after records were lost:
// live holds those a scan taken at now found there. Without a loss the
// stream's changes out of CLOSE_WAIT keep the dates right, and a socket a
// scan does not find may still be in CLOSE_WAIT: one waiting in a listener's
// accept queue has no descriptor yet, and keeps its date for when it is
// accepted. A socket that entered after the scan is kept too (the scan is
// shown a drain later; its absence proves nothing).
func (t *Tracker) Forget(live map[uint64]bool, now uint64) {
	if !t.unsure {
		return
	}
	t.unsure = false
	for sock, at := range t.entered {
		if !live[sock] && at <= now {
			delete(t.entered, sock)
		}
	}
}

// Filter narrows a report.
type Filter struct {
	PIDs   []uint32
	Comm   string
	Ports  []uint16 // local or remote
	MinAge time.Duration
}

// Socket is one CLOSE_WAIT socket of a process.
type Socket struct {
	Sock         uint64
	Family       event.Family
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
	Age          Age
}

// Count is a value with how many sockets share it.
type Count[T any] struct {
	Value T
	N     int
}

// Process is one row of the report.
type Process struct {
	PID     uint32
	Comm    [16]byte
	UID     uint32
	Cgroup  uint64
	Sockets []Socket // oldest first
	// Oldest is the oldest socket's age: exact only if every age is.
	Oldest     Age
	Peers      []Count[netip.AddrPort] // most common first
	LocalPorts []Count[uint16]
}

// Report ranks the processes holding CLOSE_WAIT sockets in one scan taken at
// now: most sockets first. A socket held by several processes counts for
// each: each of them keeps it open.
func (t *Tracker) Report(scan []owner.Holder, now uint64, f Filter) []Process {
	byPID := map[uint32]*Process{}
	live := make(map[uint64]bool, len(scan))
	// (pid, sock) pairs already counted: a dup()ed descriptor counts once.
	type held struct {
		pid  uint32
		sock uint64
	}
	seen := make(map[held]struct{}, len(scan))
	for i := range scan {
		h := &scan[i]
		if h.State != tcpstate.CloseWait {
			continue
		}
		live[h.Sock] = true
		if !f.wants(h) {
			continue
		}
		age := t.AgeOf(h, now)
		if age.D < f.MinAge {
			continue // stuck at least that long is not certain
		}
		if _, dup := seen[held{h.PID, h.Sock}]; dup {
			continue
		}
		seen[held{h.PID, h.Sock}] = struct{}{}
		p := byPID[h.PID]
		if p == nil {
			p = &Process{PID: h.PID, Comm: h.Comm, UID: h.UID, Cgroup: h.Cgroup, Oldest: Age{Known: true}}
			byPID[h.PID] = p
		}
		p.Sockets = append(p.Sockets, Socket{Sock: h.Sock, Family: h.Family, LAddr: h.LAddr, RAddr: h.RAddr,
			LPort: h.LPort, RPort: h.RPort, Age: age})
	}
	t.Forget(live, now)

	out := make([]Process, 0, len(byPID))
	for _, p := range byPID {
		slices.SortFunc(p.Sockets, func(a, b Socket) int { return cmp.Compare(b.Age.D, a.Age.D) })
		peers := map[netip.AddrPort]int{}
		ports := map[uint16]int{}
		for _, s := range p.Sockets {
			if !s.Age.Known {
				p.Oldest.Known = false
			}
			p.Oldest.D = max(p.Oldest.D, s.Age.D)
			peers[netip.AddrPortFrom(s.RAddr, s.RPort)]++
			ports[s.LPort]++
		}
		p.Peers = ranked(peers, func(a, b netip.AddrPort) int { return a.Compare(b) })
		p.LocalPorts = ranked(ports, cmp.Compare[uint16])
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Process) int {
		if c := cmp.Compare(len(b.Sockets), len(a.Sockets)); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Oldest.D, a.Oldest.D); c != 0 {
			return c
		}
		return cmp.Compare(a.PID, b.PID)
	})
	return out
}

func (f *Filter) wants(h *owner.Holder) bool {
	if len(f.PIDs) > 0 && !slices.Contains(f.PIDs, h.PID) {
		return false
	}
	if f.Comm != "" && string(commBytes(&h.Comm)) != f.Comm {
		return false
	}
	if len(f.Ports) > 0 && !slices.Contains(f.Ports, h.LPort) && !slices.Contains(f.Ports, h.RPort) {
		return false
	}
	return true
}

func ranked[T comparable](m map[T]int, tie func(a, b T) int) []Count[T] {
	out := make([]Count[T], 0, len(m))
	for v, n := range m {
		out = append(out, Count[T]{v, n})
	}
	slices.SortFunc(out, func(a, b Count[T]) int {
		if c := cmp.Compare(b.N, a.N); c != 0 {
			return c
		}
		return tie(a.Value, b.Value)
	})
	return out
}

func commBytes(c *[16]byte) []byte {
	for i, b := range c {
		if b == 0 {
			return c[:i]
		}
	}
	return c[:]
}
