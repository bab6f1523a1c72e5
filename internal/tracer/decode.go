package tracer

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

const (
	afInet  = 2
	afInet6 = 10
)

// rawEventSize is the size of struct event; a shorter sample is rejected.
const rawEventSize = int(unsafe.Sizeof(tcptraceEvent{}))

var errShortSample = errors.New("ring buffer sample shorter than struct event")

// decode fills ev from one ring-buffer sample without allocating. wallOffset
// converts the kernel's CLOCK_MONOTONIC timestamp to wall-clock time.
func decode(raw []byte, wallOffset int64, ev *event.Event) error {
	if len(raw) < rawEventSize {
		return fmt.Errorf("%w: %d < %d bytes", errShortSample, len(raw), rawEventSize)
	}
	r := (*tcptraceEvent)(unsafe.Pointer(&raw[0]))
	if r.Type != tcptraceRecordTypeRECORD_STATE {
		return fmt.Errorf("unknown record type %d", r.Type)
	}
	*ev = event.Event{
		Kind:     event.KindState,
		Time:     int64(r.TsNs) + wallOffset,
		Mono:     r.TsNs,
		Sock:     r.Skaddr,
		NetNS:    r.Netns,
		LPort:    r.Lport,
		RPort:    r.Rport,
		OldState: tcpstate.State(r.Oldstate),
		NewState: tcpstate.State(r.Newstate),
	}
	if r.Flags&tcptraceEventFlagEVENT_OWNER_UNKNOWN == 0 {
		ev.PID = r.Owner.Pid
		ev.UID = r.Owner.Uid
		ev.Comm = r.Owner.Comm
		ev.Cgroup = r.Owner.Cgroup
		ev.OwnerExited = r.Flags&tcptraceEventFlagEVENT_OWNER_EXITED != 0
		ev.OwnerUnverified = r.Flags&tcptraceEventFlagEVENT_OWNER_UNVERIFIED != 0
	}
	if r.Flags&tcptraceEventFlagEVENT_IN_STATE_KNOWN != 0 {
		ev.InState = time.Duration(r.InStateNs)
		ev.InStateKnown = true
	}
	switch r.Family {
	case afInet:
		ev.Family = event.IPv4
		ev.LAddr = netip.AddrFrom4([4]byte(r.Saddr[:4]))
		ev.RAddr = netip.AddrFrom4([4]byte(r.Daddr[:4]))
	case afInet6:
		ev.Family = event.IPv6
		ev.LAddr = netip.AddrFrom16(r.Saddr)
		ev.RAddr = netip.AddrFrom16(r.Daddr)
	default:
		return fmt.Errorf("unknown address family %d", r.Family)
	}
	return nil
}
