package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"unsafe"

	"github.com/cilium/ebpf"
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
	t.iterMu.Lock()
	defer t.iterMu.Unlock()
	if t.iter == nil {
		return ErrNoScan
	}
	rc, err := t.iter.Open()
	if err != nil {
		return fmt.Errorf("open socket scan iterator: %w", err)
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 64<<10)
	buf := make([]byte, rawSockFDSize)
	var h owner.Holder
	for {
		if _, err := io.ReadFull(br, buf); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("read socket scan: %w", err)
		}
		decodeSockFD((*tcptraceSockFd)(unsafe.Pointer(&buf[0])), &h)
		fn(&h)
	}
}

func decodeSockFD(r *tcptraceSockFd, h *owner.Holder) {
	*h = owner.Holder{Sock: r.Sk, Start: r.StartTime, Since: r.Owner.Since, PID: r.Owner.Pid,
		UID: r.Owner.Uid, Cgroup: r.Owner.Cgroup, Comm: r.Owner.Comm,
		LastActive: r.LastActive, State: tcpstate.State(r.State), LPort: r.Lport, RPort: r.Rport}
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
