package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// ErrNoScan means the kernel refused the task_file iterator.
var ErrNoScan = errors.New("socket scan unavailable (no iter/task_file)")

const rawSockFDSize = int(unsafe.Sizeof(tcptraceSockFd{}))

// Scan runs the iter/task_file program: fn sees every TCP socket file
// descriptor of every process. One pass over the kernel's tables, no /proc.
func (t *Tracer) Scan(fn func(*owner.Holder)) error {
	var h owner.Holder
	return t.readIter(&t.iter, ErrNoScan, "socket scan", rawSockFDSize, func(rec []byte) {
		decodeSockFD((*tcptraceSockFd)(unsafe.Pointer(&rec[0])), &h)
		fn(&h)
	})
}

// readIter runs the iterator in *it once, under iterMu (Detach clears *it
// under the same lock), and hands each fixed-size record to fn; fn nil only
// runs it.
func (t *Tracer) readIter(it **link.Iter, missing error, what string, size int, fn func([]byte)) error {
	t.iterMu.Lock()
	defer t.iterMu.Unlock()
	if *it == nil {
		return missing
	}
	return readIterator(*it, what, size, fn)
}

// readIterator runs it once and hands each fixed-size record to fn.
func readIterator(it *link.Iter, what string, size int, fn func([]byte)) error {
	rc, err := it.Open()
	if err != nil {
		return fmt.Errorf("open %s: %w", what, err)
	}
	defer rc.Close()
	if fn == nil {
		_, err := io.Copy(io.Discard, rc)
		return err
	}
	br := bufio.NewReaderSize(rc, 64<<10)
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(br, buf); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		fn(buf)
	}
}

func decodeSockFD(r *tcptraceSockFd, h *owner.Holder) {
	*h = owner.Holder{Sock: r.Sk, Start: r.StartTime, Since: r.Owner.Since, PID: r.Owner.Pid,
		UID: r.Owner.Uid, Cgroup: r.Owner.Cgroup, Comm: r.Owner.Comm,
		LastActive: r.LastActive, NetNS: r.Netns, State: tcpstate.State(r.State), LPort: r.Lport, RPort: r.Rport}
	if r.Family == afInet6 {
		h.Family = event.IPv6
		h.LAddr, h.RAddr = netip.AddrFrom16(r.Saddr), netip.AddrFrom16(r.Daddr)
	} else {
		h.Family = event.IPv4
		h.LAddr, h.RAddr = netip.AddrFrom4([4]byte(r.Saddr[:4])), netip.AddrFrom4([4]byte(r.Daddr[:4]))
	}
}

// SetOwner records h as its socket's owner in the kernel side, unless the
// kernel recorded an owner after h was seen.
func (t *Tracer) SetOwner(h *owner.Holder) error {
	m := t.maps.Maps["socks"]
	var si tcptraceSockInfo
	if err := m.Lookup(h.Sock, &si); err == nil && si.Owner.Since > h.Since {
		return nil
	} else if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read BPF map socks: %w", err)
	}
	si.Owner = tcptraceOwner{Since: h.Since, Cgroup: h.Cgroup, Pid: h.PID, Uid: h.UID, Comm: h.Comm}
	if err := m.Update(h.Sock, &si, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write BPF map socks: %w", err)
	}
	return nil
}

// Mono returns the kernel's CLOCK_MONOTONIC time, as bpf_ktime_get_ns.
func Mono() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// ErrNoSweep means the kernel refused the sweep of closed sockets' entries
// (iter/bpf_map_elem); the state program then deletes them itself.
var ErrNoSweep = errors.New("closed socket sweep unavailable: the kernel allows neither iter/bpf_map_elem nor bpf_for_each_map_elem (5.13+)")

// SweepClosed deletes the kernel side's entries of sockets closed over a
// second ago that no new socket at their address took over. Called at most
// once a second, it walks the table only if a socket's entry was kept at
// its close since the call before last (one the last walk found too young
// goes at this one); otherwise there is nothing to find, and an idle tracer
// saves the walk (~3 ms on 131,072 entries). It says whether it walked.
func (t *Tracer) SweepClosed() (bool, error) {
	if err := t.maps.Maps["closes_kept"].Lookup(uint32(0), &t.closesPerCPU); err != nil {
		return false, fmt.Errorf("read BPF map closes_kept: %w", err)
	}
	var n uint64
	for _, c := range t.closesPerCPU {
		n += c
	}
	before := t.closesAt
	t.closesAt = [2]uint64{before[1], n}
	if n == before[0] && n == before[1] {
		return false, nil
	}
	return true, t.readWalk(&t.sweep, ErrNoSweep, "closed socket sweep", 0, nil)
}

// ErrNoLateWalk means the kernel refused the walk of held events
// (iter/bpf_map_elem and bpf_for_each_map_elem).
var ErrNoLateWalk = errors.New("walk of held events unavailable: the kernel allows neither iter/bpf_map_elem nor bpf_for_each_map_elem (5.13+)")

// SendLate sends the held events that no change or system call exit sent
// (the SYN_SENT of a connect() that blocks) once their socket has its port.
func (t *Tracer) SendLate() error {
	if err := t.maps.Maps["held"].Lookup(uint32(0), &t.heldPerCPU); err != nil {
		return fmt.Errorf("read BPF map held: %w", err)
	}
	var held int64
	for _, n := range t.heldPerCPU {
		held += n
	}
	if held <= 0 {
		return nil // none held: an empty walk costs ~0.3 ms
	}
	return t.readWalk(&t.late, ErrNoLateWalk, "walk of held events", 0, nil)
}

// SocketEntries counts the entries of m, a socks map (the kernel side's
// table of sockets): those of open sockets, those of sockets closed before
// closedBefore (CLOCK_MONOTONIC ns, as Mono), and all. A closed socket's entry
// stays for the next socket at its address until the sweep deletes it.
func SocketEntries(m *ebpf.Map, closedBefore uint64) (open, closedOld, all int, err error) {
	var (
		key uint64
		si  tcptraceSockInfo
	)
	it := m.Iterate()
	for it.Next(&key, &si) {
		all++
		switch {
		case tcpstate.State(si.State) != tcpstate.Close:
			open++
		case si.StateTs < closedBefore:
			closedOld++
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, 0, fmt.Errorf("read BPF map socks: %w", err)
	}
	return open, closedOld, all, nil
}

// NestDepths reads m, a nesting map (the state programs' per-CPU stacks of
// changes under way; see state_catch in bpf/tcptrace.c): how many tokens each
// CPU's stack holds. Between changes every stack is empty: a token left there
// is one that no program took off.
func NestDepths(m *ebpf.Map) ([]uint32, error) {
	var nests []tcptraceStateNest
	if err := m.Lookup(uint32(0), &nests); err != nil {
		return nil, fmt.Errorf("read BPF map nesting: %w", err)
	}
	depths := make([]uint32, len(nests))
	for i, n := range nests {
		depths[i] = n.Depth
	}
	return depths, nil
}
