// Package event holds one decoded record of the tcptrace stream. Records are
// reused: the reader fills one Event per ring-buffer sample and hands a
// pointer down the pipeline, so nothing here allocates per event.
package event

import (
	"net/netip"
	"syscall"
	"time"

	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Kind tells which fields of an Event are meaningful.
type Kind uint8

const (
	// KindState is a TCP state change.
	KindState Kind = iota + 1
	// KindLost reports ring-buffer records the kernel could not write.
	KindLost
	// KindCloseWaitStuck: a socket has sat in CLOSE_WAIT for the alert's
	// duration; InState is its age (a lower bound unless InStateKnown).
	KindCloseWaitStuck
	// KindDrop: Count connection attempts dropped at the listener
	// LAddr:LPort (Sock); RAddr:RPort is the client when ClientKnown.
	KindDrop
	// KindGaps reports sockets found with a hole in their recorded history
	// (Lost holds how many since the previous such record): the kernel
	// changed their state without any tcptrace program seeing the change.
	KindGaps
	// KindRetrans: the kernel retransmitted a segment of the socket (data,
	// a SYN or a FIN); OldState is the state the socket was in, Retrans
	// its retransmissions so far, this one included.
	KindRetrans
	// KindReset: this host sent a reset. OldState is the state of the
	// socket that sent it (0: no socket took the segment that drew it,
	// e.g. one to a closed port), ResetReason the kernel's reason for it;
	// the ends are the connection's (LAddr:LPort this host's). Sock is 0
	// without a socket.
	KindReset
	// KindSynFlood: the kernel flagged the listener LAddr:LPort (Sock) as
	// possibly SYN-flooded, its SYN queue having overflowed (its "Possible
	// SYN flooding" warning, once per listener): Drop.Syncookies says
	// whether cookies answered the SYNs past the queue or they were dropped,
	// Drop.FloodBefore that the flag predates tcptrace's first sight of the
	// listener; Drop's queue figures are as polled.
	KindSynFlood
)

// Family is the address family shown to the user (v4-mapped IPv6 is IPv4).
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// String returns "ipv4" or "ipv6".
func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Event is one record of the stream.
type Event struct {
	Kind Kind
	// Time is the wall-clock time of the event, in nanoseconds since the epoch.
	Time int64
	// Mono is the kernel's CLOCK_MONOTONIC timestamp of the event.
	Mono uint64

	// Sock identifies the kernel socket for the socket's lifetime.
	Sock  uint64
	NetNS uint32

	// The socket's owner: the process holding it (the most recent holder when
	// several do). PID is 0 when no owner is known.
	PID, UID uint32
	Comm     [16]byte
	Cgroup   uint64 // cgroup v2 id
	// CgroupPath is the owner's cgroup v2 path, "" when unknown.
	CgroupPath string
	// PIDs lists every process holding the socket, primary first; nil means
	// just PID. It points into the resolver's cache: do not modify it.
	PIDs []uint32
	// OwnerExited: the owner has exited while the socket lingers (an orphan).
	OwnerExited bool
	// OwnerUnverified: the owner forked or exec'd since it was recorded, so
	// the socket may have moved or its owner's name changed; the owner
	// resolver clears it.
	OwnerUnverified bool

	Family       Family
	LAddr, RAddr netip.Addr
	LPort, RPort uint16

	OldState, NewState tcpstate.State
	// TimeWait: this change into CLOSE handed the connection to a timewait
	// socket (the kernel never moves a socket into TIME_WAIT itself).
	TimeWait bool
	// Error is, on a change into CLOSE, the error the socket closed with
	// (the kernel's sk_err: ECONNRESET for a reset, ETIMEDOUT when
	// retransmissions or keepalive probes ran out, ...); 0 for none.
	Error syscall.Errno
	// Retrans is, on a change into CLOSE, how many segments the connection
	// retransmitted in its life (the kernel's total_retrans, which counts
	// SYN and SYN-ACK retransmissions too); on KindRetrans, how many so far.
	Retrans uint32
	// ResetReason is, on KindReset, the kernel's reason for the reset in
	// lower case (enum sk_rst_reason without its prefix: no_socket,
	// tcp_abort_on_close, ...); "" when the kernel gives none (before 6.10).
	ResetReason string
	// InState is the time spent in OldState; valid when InStateKnown.
	InState      time.Duration
	InStateKnown bool

	// Lost is the number of records lost since the previous lost record
	// (KindLost), or of sockets with a gap since the previous gaps record
	// (KindGaps).
	Lost uint64

	// Drops (KindDrop).
	Drop Drop
}

// Drop describes drops at a listener.
type Drop struct {
	// Reason is accept_queue_full, syn_queue_full, listen_drop (the listener
	// counted a drop whose cause its queues no longer show), or the kernel's
	// drop-reason name in lower case.
	Reason string
	// KernelReason is the kernel's skb_drop_reason name, when a packet was seen.
	KernelReason string
	Count        uint64
	// Other is a TCP drop elsewhere than at a listener's queues (a packet the
	// kernel dropped for KernelReason): no listen drop, no queue figures.
	Other       bool
	Backlog     uint32 // accept queue length
	MaxBacklog  uint32
	SynQueue    uint32 // handshakes under way
	ClientKnown bool
	// Syncookies is the listener's namespace's net.ipv4.tcp_syncookies
	// (KindSynFlood).
	Syncookies uint8
	// FloodBefore: the SYN-flood flag was already set when tcptrace first
	// saw the listener (KindSynFlood).
	FloodBefore bool
	// TopClients, for a summary of folded per-packet drops: most frequent first.
	TopClients []ClientCount
}

// ClientCount is a dropped client address and how often it was dropped.
type ClientCount struct {
	Addr  netip.Addr
	Count uint64
}

// Into is the state the connection entered: TIME_WAIT for a change into
// CLOSE that left a timewait socket in the socket's place, else NewState.
func (e *Event) Into() tcpstate.State {
	if e.TimeWait {
		return tcpstate.TimeWait
	}
	return e.NewState
}

// OwnerKnown reports whether the event names the socket's owner.
func (e *Event) OwnerKnown() bool { return e.PID != 0 }

// CommBytes returns the command name without its NUL padding.
func (e *Event) CommBytes() []byte {
	for i, c := range e.Comm {
		if c == 0 {
			return e.Comm[:i]
		}
	}
	return e.Comm[:]
}

// SetComm stores a command name, truncated as the kernel does (15 bytes).
func (e *Event) SetComm(s string) {
	e.Comm = [16]byte{}
	copy(e.Comm[:15], s)
}
