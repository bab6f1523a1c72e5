// Package timewait ranks the processes behind TIME_WAIT pile-ups and
// ephemeral port exhaustion: per process and peer, the closes that left a
// timewait socket over the last minute (what is in TIME_WAIT now, as a
// timewait socket lives 60 s), the connect()s made, and those that found no
// free local port.
package timewait

import (
	"cmp"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Window is how far back the counts reach: the life of a timewait socket
// (the kernel's TCP_TIMEWAIT_LEN, not a sysctl).
const Window = 60

// Peer is one process's traffic with one remote address: to one of its
// ports (RPort; connections this host made), or to local port LPort (those
// it accepted: their timewait sockets hold no ephemeral port, and each
// client connects from ports of its own).
type Peer struct {
	RAddr        netip.Addr
	RPort, LPort uint16
	Counts
	// Ephemeral: of TimeWait, those whose local port is in the namespace's
	// ephemeral range, each holding that port for this peer until it ends.
	Ephemeral uint64
	// Ports is the size of that range, 0 when unknown (then every close
	// counts as one to RPort).
	Ports int
}

// Counts are what happened over the window.
type Counts struct {
	TimeWait uint64 // closes that left a timewait socket
	Connects uint64 // connect()s that reached ESTABLISHED
	NoPort   uint64 // connect()s that found no free local port (EADDRNOTAVAIL)
}

func (c *Counts) add(o *Counts) {
	c.TimeWait += o.TimeWait
	c.Connects += o.Connects
	c.NoPort += o.NoPort
}

// Process is one row of the ranking: its peers busiest first. A row with
// BeforeStart holds a namespace's timewait sockets that were there when the
// tracker began (Seed): made by processes unknown (PID 0).
type Process struct {
	NetNS       uint32
	PID         uint32
	Comm        [16]byte
	BeforeStart bool
	Counts
	Peers []Peer
}

// PortRange says which local ports are ephemeral in a namespace: lo..hi,
// ok false when unknown.
type PortRange func(netns, pid uint32) (lo, hi uint16, ok bool)

type key struct {
	netns, pid  uint32
	comm        [16]byte
	beforeStart bool
	raddr       netip.Addr
	rport       uint16
	lport       uint16
}

// tuple is a connection's ends in a namespace.
type tuple struct {
	netns        uint32
	laddr, raddr netip.Addr
	lport, rport uint16
}

// second is one second's counts of a key.
type second struct {
	at uint64 // the second (CLOCK_MONOTONIC) these counts are of
	Counts
	ephemeral uint64
}

// window holds a key's seconds that counted something, oldest first: most
// keys (a server's clients) have one or two, so a key costs what it counts.
type window struct {
	secs  []second
	ports int
}

// at returns the bucket of second at, made if need be (records come nearly
// in order: a late one goes a step or two back).
func (w *window) at(at uint64) *second {
	i := len(w.secs)
	for i > 0 && w.secs[i-1].at > at {
		i--
	}
	if i > 0 && w.secs[i-1].at == at {
		return &w.secs[i-1]
	}
	w.secs = slices.Insert(w.secs, i, second{at: at})
	return &w.secs[i]
}

// Tracker counts the records of a stream into one-second buckets.
type Tracker struct {
	ports PortRange
	keys  map[key]*window
	start uint64 // CLOCK_MONOTONIC ns when it began
	// seeded: the connections Seed counted, until seededUntil (see Seed).
	seeded      map[tuple]bool
	seededUntil uint64
}

// NewTracker starts counting at now (CLOCK_MONOTONIC ns); ports may be nil.
func NewTracker(now uint64, ports PortRange) *Tracker {
	return &Tracker{ports: ports, keys: map[key]*window{}, start: now}
}

// Watched is how long the tracker has counted, at most the window, in
// seconds: counts cover only that much.
func (t *Tracker) Watched(now uint64) float64 {
	return min(float64(now-t.start)/1e9, Window)
}

// Observe counts e if it is a close into TIME_WAIT, a connect() that
// completed, or one that found no local port.
func (t *Tracker) Observe(e *event.Event) {
	if e.Kind != event.KindState {
		return
	}
	var c Counts
	switch {
	case e.NewState == tcpstate.Close && e.TimeWait:
		c.TimeWait = 1
	case e.OldState == tcpstate.SynSent && e.NewState == tcpstate.Established:
		c.Connects = 1
	case e.OldState == tcpstate.SynSent && e.NewState == tcpstate.Close && e.Error == syscall.EADDRNOTAVAIL:
		c.NoPort = 1
	default:
		return
	}
	if c.TimeWait == 1 && e.Mono <= t.seededUntil &&
		t.seeded[tuple{netns: e.NetNS, laddr: e.LAddr, raddr: e.RAddr, lport: e.LPort, rport: e.RPort}] {
		return // its timewait socket was in the snapshot already
	}
	t.count(key{netns: e.NetNS, pid: e.PID, comm: e.Comm, raddr: e.RAddr, rport: e.RPort}, e.LPort, e.Mono, &c)
}

// count adds c at second mono to k, a connection's from local port lport.
func (t *Tracker) count(k key, lport uint16, mono uint64, c *Counts) {
	var lo, hi uint16
	var known bool
	if t.ports != nil {
		lo, hi, known = t.ports(k.netns, k.pid)
		known = known && hi >= lo
	}
	ephemeral := known && lport >= lo && lport <= hi
	if c.TimeWait == 1 && known && !ephemeral {
		k.rport, k.lport = 0, lport // an accepted connection's
	}
	w := t.keys[k]
	if w == nil {
		w = &window{}
		t.keys[k] = w
	}
	if known { // (learnt late where the first process asked was gone)
		w.ports = int(hi) - int(lo) + 1
	}
	s := w.at(mono / 1e9)
	s.add(c)
	if c.TimeWait == 1 && ephemeral {
		s.ephemeral++
	}
}

// Earlier is a timewait socket found in a namespace's socket table.
type Earlier struct {
	NetNS        uint32
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
	Left         time.Duration // until the kernel ends it
}

// Seed counts the timewait sockets that were there when tracking began
// (taken at now, CLOCK_MONOTONIC ns, once the stream's hook was attached),
// each as a close at the second that has it end with the window when the
// kernel ends it. A close the stream reports from before now, of a
// connection seeded, is its socket's and not counted again.
func (t *Tracker) Seed(socks []Earlier, now uint64) {
	if t.seeded == nil {
		t.seeded = map[tuple]bool{}
	}
	t.seededUntil = max(t.seededUntil, now)
	one := Counts{TimeWait: 1}
	for _, s := range socks {
		lived := time.Duration(Window)*time.Second - min(s.Left, time.Duration(Window)*time.Second)
		at := now - min(now, uint64(lived))
		t.count(key{netns: s.NetNS, beforeStart: true, raddr: s.RAddr, rport: s.RPort}, s.LPort, at, &one)
		t.seeded[tuple{netns: s.NetNS, laddr: s.LAddr, raddr: s.RAddr, lport: s.LPort, rport: s.RPort}] = true
	}
}

// seedHold is how long after the snapshot a close from before it may still
// come: records wait in the ring buffers for a drain (20 ms) and the merge
// (5 ms).
const seedHold = 2 * time.Second

// Report ranks the processes by their counts over the window that ends at
// now (CLOCK_MONOTONIC ns), TIME_WAIT first, and forgets what has aged out.
func (t *Tracker) Report(now uint64) []Process {
	if t.seeded != nil && now > t.seededUntil+uint64(seedHold) {
		t.seeded = nil
	}
	cur := now / 1e9
	procs := map[key]*Process{}
	for k, w := range t.keys {
		p := Peer{RAddr: k.raddr, RPort: k.rport, LPort: k.lport, Ports: w.ports}
		old := 0 // seconds aged out, at the front
		for old < len(w.secs) && w.secs[old].at+Window <= cur {
			old++
		}
		w.secs = slices.Delete(w.secs, 0, old)
		for i := range w.secs {
			if s := &w.secs[i]; s.at <= cur {
				p.add(&s.Counts)
				p.Ephemeral += s.ephemeral
			}
		}
		if p.Counts == (Counts{}) {
			delete(t.keys, k)
			continue
		}
		pk := key{netns: k.netns, pid: k.pid, comm: k.comm, beforeStart: k.beforeStart}
		pr := procs[pk]
		if pr == nil {
			pr = &Process{NetNS: k.netns, PID: k.pid, Comm: k.comm, BeforeStart: k.beforeStart}
			procs[pk] = pr
		}
		pr.add(&p.Counts)
		pr.Peers = append(pr.Peers, p)
	}
	out := make([]Process, 0, len(procs))
	for _, p := range procs {
		slices.SortFunc(p.Peers, func(a, b Peer) int {
			return cmp.Or(byCounts(&a.Counts, &b.Counts), a.RAddr.Compare(b.RAddr), cmp.Compare(a.RPort, b.RPort),
				cmp.Compare(a.LPort, b.LPort))
		})
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b Process) int {
		return cmp.Or(byCounts(&a.Counts, &b.Counts), cmp.Compare(a.PID, b.PID), cmp.Compare(a.NetNS, b.NetNS),
			compareBool(a.BeforeStart, b.BeforeStart))
	})
	return out
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// byCounts orders busiest first: TIME_WAIT, then failed, then made connects.
func byCounts(a, b *Counts) int {
	return cmp.Or(cmp.Compare(b.TimeWait, a.TimeWait), cmp.Compare(b.NoPort, a.NoPort), cmp.Compare(b.Connects, a.Connects))
}

// Share is the part of the ephemeral range p's timewait sockets hold, and
// whether it is known (never for accepted connections).
func (p *Peer) Share() (float64, bool) {
	if p.Ports == 0 || p.LPort != 0 {
		return 0, false
	}
	return float64(p.Ephemeral) / float64(p.Ports), true
}
