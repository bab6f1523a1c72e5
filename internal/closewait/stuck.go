package closewait

import (
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Stuck raises one alert per socket that sits in CLOSE_WAIT for After, for
// the stream's --close-wait-alert. It holds only sockets now in CLOSE_WAIT
// and not yet reported.
type Stuck struct {
	After time.Duration
	socks map[uint64]*stuckSock
}

type stuckSock struct {
	ev      event.Event // the change into CLOSE_WAIT, with its owner
	entered uint64      // CLOCK_MONOTONIC ns; a lower bound unless known
	known   bool
}

// NewStuck alerts after d.
func NewStuck(d time.Duration) *Stuck {
	return &Stuck{After: d, socks: map[uint64]*stuckSock{}}
}

// Observe takes a state change from the stream, owner already resolved.
func (s *Stuck) Observe(e *event.Event) {
	switch {
	case e.Kind != event.KindState:
	case e.NewState == tcpstate.CloseWait:
		ev := *e
		ev.PIDs = append([]uint32(nil), e.PIDs...) // e.PIDs points into a cache
		s.socks[e.Sock] = &stuckSock{ev: ev, entered: e.Mono, known: true}
	case e.OldState == tcpstate.CloseWait:
		delete(s.socks, e.Sock)
	}
}

// Seed adds a socket already in CLOSE_WAIT when tracing started (start);
// its age is only known to be at least since its last activity or start.
func (s *Stuck) Seed(h *owner.Holder, start uint64) {
	if _, ok := s.socks[h.Sock]; ok || h.State != tcpstate.CloseWait {
		return
	}
	from := start
	if h.LastActive != 0 && h.LastActive < from {
		from = h.LastActive
	}
	ev := event.Event{Kind: event.KindState, Mono: start, Sock: h.Sock, PID: h.PID, UID: h.UID,
		Comm: h.Comm, Cgroup: h.Cgroup, Family: h.Family, LAddr: h.LAddr, RAddr: h.RAddr,
		LPort: h.LPort, RPort: h.RPort, NewState: tcpstate.CloseWait}
	s.socks[h.Sock] = &stuckSock{ev: ev, entered: from}
}

// Due emits an alert for every socket stuck at least After by now
// (CLOCK_MONOTONIC ns); wallOffset turns that into wall-clock time.
func (s *Stuck) Due(now uint64, wallOffset int64, emit func(*event.Event) error) error {
	for sock, st := range s.socks {
		if now < st.entered || time.Duration(now-st.entered) < s.After {
			continue
		}
		delete(s.socks, sock)
		e := st.ev
		e.Kind = event.KindCloseWaitStuck
		e.Mono = now
		e.Time = int64(now) + wallOffset
		e.OldState, e.NewState = tcpstate.CloseWait, tcpstate.CloseWait
		e.InState, e.InStateKnown = time.Duration(now-st.entered), st.known
		if err := emit(&e); err != nil {
			return err
		}
	}
	return nil
}
