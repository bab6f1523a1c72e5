package tracer

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
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
const (
	rawEventSize = int(unsafe.Sizeof(tcptraceEvent{}))
	rawDropSize  = int(unsafe.Sizeof(tcptraceDrop{}))
	typeOffset   = int(unsafe.Offsetof(tcptraceEvent{}.Type))
)

// Both record types keep their type field at the same offset.
var _ = [1]struct{}{}[typeOffset-int(unsafe.Offsetof(tcptraceDrop{}.Type))]

// resetReasonNone is RESET_REASON_NONE (bpf/tcptrace.h): the kernel gave
// no reason for the reset (before 6.10).
const resetReasonNone = 0xffffffff

var errShortSample = errors.New("ring buffer sample shorter than struct event")

// decode fills ev from one ring-buffer sample without allocating. wallOffset
// converts the kernel's CLOCK_MONOTONIC timestamp to wall-clock time.
func decode(raw []byte, wallOffset int64, reasons *kernelReasons, ev *event.Event) error {
	if len(raw) < typeOffset+4 {
		return fmt.Errorf("%w: %d bytes", errShortSample, len(raw))
	}
	kind := event.KindState
	switch tcptraceRecordType(*(*uint32)(unsafe.Pointer(&raw[typeOffset]))) {
	case tcptraceRecordTypeRECORD_STATE:
	case tcptraceRecordTypeRECORD_RETRANS:
		kind = event.KindRetrans
	case tcptraceRecordTypeRECORD_RESET:
		kind = event.KindReset
	case tcptraceRecordTypeRECORD_DROP:
		return decodeDrop(raw, wallOffset, reasons, ev)
	default:
		return fmt.Errorf("unknown record type %d", *(*uint32)(unsafe.Pointer(&raw[typeOffset])))
	}
	if len(raw) < rawEventSize {
		return fmt.Errorf("%w: %d < %d bytes", errShortSample, len(raw), rawEventSize)
	}
	r := (*tcptraceEvent)(unsafe.Pointer(&raw[0]))
	flags := tcptraceEventFlag(r.Flags)
	*ev = event.Event{
		Kind:     kind,
		Time:     int64(r.TsNs) + wallOffset,
		Mono:     r.TsNs,
		Sock:     r.Skaddr,
		NetNS:    r.Netns,
		LPort:    r.Lport,
		RPort:    r.Rport,
		OldState: tcpstate.State(r.Oldstate),
		NewState: tcpstate.State(r.Newstate),
		TimeWait: flags&tcptraceEventFlagEVENT_TIME_WAIT != 0,
		Error:    syscall.Errno(r.Error),
		Retrans:  r.Retrans,
	}
	if flags&tcptraceEventFlagEVENT_OWNER_UNKNOWN == 0 {
		setOwner(&r.Owner, ev)
		ev.OwnerExited = flags&tcptraceEventFlagEVENT_OWNER_EXITED != 0
		ev.OwnerUnverified = flags&tcptraceEventFlagEVENT_OWNER_UNVERIFIED != 0
	}
	if kind == event.KindReset {
		// The union's other member: the reason, not a count.
		ev.Retrans, ev.ResetReason = 0, reasons.resetName(r.Retrans)
	}
	if flags&tcptraceEventFlagEVENT_IN_STATE_KNOWN != 0 {
		ev.InState = time.Duration(r.InStateNs)
		ev.InStateKnown = true
	}
	return decodeAddrs(r.Family, &r.Saddr, &r.Daddr, ev)
}

func setOwner(o *tcptraceOwner, ev *event.Event) {
	ev.PID, ev.UID, ev.Comm, ev.Cgroup = o.Pid, o.Uid, o.Comm, o.Cgroup
}

func decodeAddrs(family uint16, saddr, daddr *[16]byte, ev *event.Event) error {
	switch family {
	case afInet:
		ev.Family = event.IPv4
		ev.LAddr = netip.AddrFrom4([4]byte(saddr[:4]))
		ev.RAddr = netip.AddrFrom4([4]byte(daddr[:4]))
	case afInet6:
		ev.Family = event.IPv6
		ev.LAddr = netip.AddrFrom16(*saddr)
		ev.RAddr = netip.AddrFrom16(*daddr)
	default:
		return fmt.Errorf("unknown address family %d", family)
	}
	return nil
}

func decodeDrop(raw []byte, wallOffset int64, reasons *kernelReasons, ev *event.Event) error {
	if len(raw) < rawDropSize {
		return fmt.Errorf("%w: %d < %d bytes", errShortSample, len(raw), rawDropSize)
	}
	r := (*tcptraceDrop)(unsafe.Pointer(&raw[0]))
	kind := tcptraceDropKind(r.Kind)
	*ev = event.Event{
		Kind:  event.KindDrop,
		Time:  int64(r.TsNs) + wallOffset,
		Mono:  r.TsNs,
		Sock:  r.Skaddr,
		NetNS: r.Netns,
		LPort: r.Lport,
		RPort: r.Rport,
		Drop: event.Drop{
			Count:       uint64(r.Count),
			Backlog:     r.Backlog,
			MaxBacklog:  r.MaxBacklog,
			SynQueue:    r.SynQueue,
			ClientKnown: kind != tcptraceDropKindDROP_COUNTED,
		},
	}
	setOwner(&r.Owner, ev)
	switch kind {
	case tcptraceDropKindDROP_PACKET:
		ev.Drop.KernelReason = reasons.name(r.Reason)
		if r.Reason == reasons.listenOverflow {
			ev.Drop.Reason = "accept_queue_full"
		} else {
			ev.Drop.Reason = ev.Drop.KernelReason
		}
	case tcptraceDropKindDROP_OTHER:
		ev.Drop.Other = true
		ev.Drop.KernelReason = "not_specified" // tcp_drop() on kernels before drop reasons
		if len(reasons.names) > 0 {
			ev.Drop.KernelReason = reasons.name(r.Reason)
		}
		ev.Drop.Reason = ev.Drop.KernelReason
	case tcptraceDropKindDROP_SYN_FLOOD:
		ev.Kind = event.KindSynFlood
		ev.Drop.Reason = "syn_flood"
		ev.Drop.ClientKnown = false
		ev.Drop.Syncookies = r.Syncookies
		ev.Drop.FloodBefore = r.Reason != 0
	case tcptraceDropKindDROP_ACK:
		// The handshake's last step failed: for want of accept queue room,
		// or (rarely) memory or a route.
		ev.Drop.Reason = "listen_drop"
		if r.Backlog > r.MaxBacklog {
			ev.Drop.Reason = "accept_queue_full"
		}
	default: // a SYN, or what the counter counted: the queues tell
		ev.Drop.Reason = reasonFromQueues(r.Backlog, r.MaxBacklog, r.SynQueue, r.Syncookies)
	}
	if err := decodeAddrs(r.Family, &r.Saddr, &r.Daddr, ev); err != nil {
		return err
	}
	// An IPv4 client of a dual-stack listener comes v4-mapped.
	ev.RAddr = ev.RAddr.Unmap()
	return nil
}

// reasonFromQueues names a counted drop by the listener's queues when it was
// counted, checked in the kernel's order (tcp_conn_request): a full SYN queue
// drops the SYN unless syncookies answer it (tcp_syncookies 1 or 2), then a
// full accept queue (more than max waiting) drops it.
func reasonFromQueues(backlog, max, synq uint32, syncookies uint8) string {
	switch {
	case synq >= max && max > 0 && syncookies == 0:
		return "syn_queue_full"
	case backlog > max:
		return "accept_queue_full"
	}
	return "listen_drop"
}
