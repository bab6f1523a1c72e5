// Package owner names the process that owns each socket in the stream.
//
// The kernel side records owners where it can prove them and flags events
// whose owner it cannot vouch for: sockets older than tcptrace, and sockets
// whose owner forked since (the socket may now be the child's). The Resolver
// settles those from a scan of every process's socket file descriptors, taken
// at start and again on demand, never more often than its rate limit allows,
// and tells the kernel side what it found so later events need no help.
package owner

import (
	"net/netip"
	"slices"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Holder is one process holding a file descriptor of a TCP socket, with the
// socket's state and addresses as the scan saw them.
type Holder struct {
	Sock   uint64
	Start  uint64 // process start time (CLOCK_MONOTONIC): the most recent holder is primary
	Since  uint64 // when the scan saw it (CLOCK_MONOTONIC)
	PID    uint32
	UID    uint32
	Cgroup uint64
	Comm   [16]byte

	// LastActive is the socket's last send or receive (CLOCK_MONOTONIC ns).
	LastActive   uint64
	NetNS        uint32
	State        tcpstate.State
	Family       event.Family
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
}

// Source is the kernel side: a scan of every socket fd, and the owner record.
type Source interface {
	// Scan calls fn for every TCP socket file descriptor of every process.
	// The *Holder is reused between calls.
	Scan(fn func(*Holder)) error
	// SetOwner records h as the socket's owner unless the kernel side has
	// recorded a newer one meanwhile.
	SetOwner(h *Holder) error
}

// CgroupNamer turns a cgroup v2 id into its path.
type CgroupNamer interface {
	Path(id uint64) string
}

// Resolver enriches events with their socket's owner.
type Resolver struct {
	src     Source
	cgroups CgroupNamer
	now     func() time.Time
	sleep   func(time.Duration)

	// From the last scan: every socket's holders (primary first) and PIDs.
	holders map[uint64][]Holder
	pids    map[uint64][]uint32
	// Sockets whose owner the kernel side already got from the last scan.
	pushed map[uint64]bool
	// Sockets a scan newer than their event found no process holding
	// (orphans, connections not yet accepted): not worth another scan.
	unheld map[uint64]bool

	scanMono uint64 // kernel time at which the last scan started
	scanEnd  time.Time
	scanCost time.Duration

	// MinGap is the least time between two scans; a scan that costs more
	// widens it, so scans never take more than a tenth of a CPU. An event
	// that needs a scan waits for it, so it is named correctly.
	MinGap time.Duration
	// Stats
	Scans    int
	ScanErrs int
}

// NewResolver returns a resolver over src; cgroups may be nil.
func NewResolver(src Source, cgroups CgroupNamer) *Resolver {
	return &Resolver{
		src:     src,
		cgroups: cgroups,
		now:     time.Now,
		sleep:   time.Sleep,
		unheld:  map[uint64]bool{},
		MinGap:  20 * time.Millisecond,
	}
}

// Snapshot scans every process's sockets and records each socket's primary
// holder in the kernel side, so sockets older than tcptrace have owners.
func (r *Resolver) Snapshot(mono uint64) error {
	if err := r.scan(mono); err != nil {
		return err
	}
	for sock, hs := range r.holders {
		if err := r.src.SetOwner(&hs[0]); err != nil {
			return err
		}
		r.pushed[sock] = true
	}
	return nil
}

func (r *Resolver) scan(mono uint64) error {
	start := r.now()
	holders := make(map[uint64][]Holder, len(r.holders))
	err := r.src.Scan(func(h *Holder) {
		hs := holders[h.Sock]
		for _, x := range hs {
			if x.PID == h.PID {
				return // dup()ed descriptors, or threads with their own table
			}
		}
		holders[h.Sock] = append(hs, *h)
	})
	r.scanEnd = r.now()
	r.scanCost = r.scanEnd.Sub(start)
	r.Scans++
	if err != nil {
		r.ScanErrs++
		return err
	}
	pids := make(map[uint64][]uint32, len(holders))
	for sock, hs := range holders {
		// Most recent holder first: after a fork the child is the one to name.
		slices.SortStableFunc(hs, func(a, b Holder) int {
			switch {
			case a.Start > b.Start:
				return -1
			case a.Start < b.Start:
				return 1
			}
			return 0
		})
		if len(hs) > 1 {
			ps := make([]uint32, len(hs))
			for i := range hs {
				ps[i] = hs[i].PID
			}
			pids[sock] = ps
		}
	}
	r.holders, r.pids = holders, pids
	r.pushed = make(map[uint64]bool, len(holders))
	r.scanMono = mono
	return nil
}

// untilScan is how long the rate limit asks to wait before the next scan.
func (r *Resolver) untilScan() time.Duration {
	if r.scanEnd.IsZero() {
		return 0
	}
	gap := r.MinGap
	if c := 10 * r.scanCost; c > gap {
		gap = c
	}
	return gap - r.now().Sub(r.scanEnd)
}

// maxUnheld bounds the negative cache; past it, it starts over.
const maxUnheld = 1 << 16

// Enrich settles e's owner and fills the holder list and cgroup path. mono
// is the kernel's current CLOCK_MONOTONIC time, used to date a new scan.
func (r *Resolver) Enrich(e *event.Event, mono func() uint64) {
	switch e.Kind {
	case event.KindState, event.KindDrop, event.KindRetrans, event.KindSynFlood:
	case event.KindReset:
		if e.Sock == 0 { // no socket sent it: no one to find
			return
		}
	default:
		return
	}
	if (!e.OwnerKnown() || e.OwnerUnverified) && !r.unheld[e.Sock] {
		// Only a scan newer than the event can tell where the socket went.
		if r.scanMono < e.Mono {
			if wait := r.untilScan(); wait > 0 {
				r.sleep(wait)
			}
			r.scan(mono())
		}
		if hs := r.holders[e.Sock]; len(hs) > 0 {
			h := &hs[0]
			e.PID, e.UID, e.Comm, e.Cgroup = h.PID, h.UID, h.Comm, h.Cgroup
			e.OwnerExited = false
			if !r.pushed[e.Sock] {
				r.pushed[e.Sock] = true
				r.src.SetOwner(h)
			}
		} else {
			if len(r.unheld) >= maxUnheld {
				clear(r.unheld)
			}
			r.unheld[e.Sock] = true
		}
	}
	e.OwnerUnverified = false
	e.PIDs = nil
	if ps := r.pids[e.Sock]; ps != nil && slices.Contains(ps, e.PID) {
		e.PIDs = ps
	}
	e.CgroupPath = ""
	if r.cgroups != nil && e.OwnerKnown() {
		e.CgroupPath = r.cgroups.Path(e.Cgroup)
	}
	if e.Kind == event.KindState && e.NewState == tcpstate.Close { // the socket is done; its address may be reused
		delete(r.holders, e.Sock)
		delete(r.pids, e.Sock)
		delete(r.pushed, e.Sock)
		delete(r.unheld, e.Sock)
	}
}

// EachHolder calls fn with the primary holder of every socket the last scan saw.
func (r *Resolver) EachHolder(fn func(*Holder)) {
	for _, hs := range r.holders {
		fn(&hs[0])
	}
}

// Tracked returns how many sockets the resolver holds state for (for tests
// and memory accounting).
func (r *Resolver) Tracked() int { return len(r.holders) + len(r.unheld) }
