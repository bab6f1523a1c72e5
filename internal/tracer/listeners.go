package tracer

import (
	"errors"
	"net/netip"
	"unsafe"

	"github.com/tcptrace/tcptrace/internal/event"
)

// Listener is one listening TCP socket.
type Listener struct {
	Sock       uint64
	NetNS      uint32
	Family     event.Family
	Addr       netip.Addr
	Port       uint16
	Drops      uint32 // every drop since listen()
	Backlog    uint32 // accept queue length
	MaxBacklog uint32
	SynQueue   uint32
	// SynFlood: the kernel flagged a possible SYN flood here (its SYN queue
	// overflowed since listen(): cookies sent, or SYNs dropped without).
	SynFlood bool
	PID, UID uint32 // owner; PID 0 when unknown
	Comm     [16]byte
	Cgroup   uint64
}

// ErrNoListenerWalk means the kernel refused the listener walk (iter/bpf_map_elem).
var ErrNoListenerWalk = errors.New("listener walk unavailable: the kernel allows neither iter/bpf_map_elem nor bpf_for_each_map_elem (5.13+)")

const rawListenerSize = int(unsafe.Sizeof(tcptraceListener{}))

// PollListeners walks every TCP socket once: drops that listeners counted
// since the last walk go into the stream (with --events drops), and fn, when
// not nil, sees every listener.
func (t *Tracer) PollListeners(fn func(*Listener)) error {
	var read func([]byte)
	if fn != nil {
		var l Listener
		read = func(rec []byte) {
			decodeListener((*tcptraceListener)(unsafe.Pointer(&rec[0])), &l)
			fn(&l)
		}
	}
	return t.readWalk(&t.poll, ErrNoListenerWalk, "listener walk", rawListenerSize, read)
}

func decodeListener(r *tcptraceListener, l *Listener) {
	*l = Listener{Sock: r.Skaddr, NetNS: r.Netns, Port: r.Lport, Drops: r.Drops, Backlog: r.Backlog,
		MaxBacklog: r.MaxBacklog, SynQueue: r.SynQueue, SynFlood: r.Synflood != 0, PID: r.Owner.Pid, UID: r.Owner.Uid,
		Comm: r.Owner.Comm, Cgroup: r.Owner.Cgroup}
	if r.Family == afInet6 {
		l.Family, l.Addr = event.IPv6, netip.AddrFrom16(r.Saddr)
	} else {
		l.Family, l.Addr = event.IPv4, netip.AddrFrom4([4]byte(r.Saddr[:4]))
	}
}
