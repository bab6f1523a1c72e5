package e2e

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSynSentPortAtConnect: connect() moves a socket to SYN_SENT before it
// picks the local port, so the kernel side holds that change until connect()
// returns. A non-blocking connect() whose SYN is never answered (the
// listener's accept queue is full) must still arrive at once, with its port,
// and not only at the socket's next change (its close, here). On the
// syscalls: tracepoints of connect() and accept() too (tracepoints forced),
// not only on the sys_exit program chosen where tracefs is not mounted.
func TestSynSentPortAtConnect(t *testing.T) {
	needRoot(t)
	t.Run("default", func(t *testing.T) {
		// The syscalls: tracepoints by default too, tracefs mounted or not
		// (see TestSyscallTracepointsLeaveNoMount).
		tr := synSentPortAtConnect(t)
		const want = "connect port, accept owner: tracepoint/syscalls/sys_exit_accept4,sys_exit_accept,sys_exit_connect (active)"
		if !strings.Contains(tr.stderrText(), want) {
			t.Errorf("-v lacks %q:\n%s", want, tr.stderrText())
		}
	})
	t.Run("tracepoint", func(t *testing.T) {
		tr := synSentPortAtConnect(t, "--hook-kind", "tracepoint")
		const want = "connect port, accept owner: tracepoint/syscalls/sys_exit_accept4,sys_exit_accept,sys_exit_connect (active)"
		if !strings.Contains(tr.stderrText(), want) {
			t.Errorf("-v lacks %q:\n%s", want, tr.stderrText())
		}
	})
}

func synSentPortAtConnect(t *testing.T, args ...string) *tracerProc {
	ns := newNetNS(t)
	tr := startTracer(t, append(args, "-v")...)
	const port = 7313
	var (
		fds   []int
		conns []net.Conn
		cport int
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		for _, fd := range fds {
			syscall.Close(fd)
		}
	})
	err := ns.do(func() error {
		lfd, err := fullListener(port, &conns)
		if lfd >= 0 {
			fds = append(fds, lfd)
		}
		if err != nil {
			return err
		}
		// One CPU for the connect(): its exit must find the held change on
		// the CPU that made it.
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err != nil {
			return err
		}
		cpu := -1
		for i := 0; i < 1024 && cpu < 0; i++ {
			if set.IsSet(i) {
				cpu = i
			}
		}
		var one unix.CPUSet
		one.Set(cpu)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			return err
		}
		defer unix.SchedSetaffinity(0, &set)
		fd, err := deferredConnect(&syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}, false)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return err
		}
		cport = sa.(*syscall.SockaddrInet4).Port
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(waitLong)
	for {
		var synSent, closed bool
		for _, r := range tr.states(ns) {
			if int(r.LPort) != cport {
				continue
			}
			synSent = synSent || r.OldState == "CLOSE" && r.NewState == "SYN_SENT" && r.RPort == port
			closed = closed || r.NewState == "CLOSE"
		}
		if closed {
			// Held until the socket's next change: connect()'s exit did not send it.
			t.Fatalf("CLOSE->SYN_SENT of local port %d came only with its CLOSE (synSent %v):\n%s",
				cport, synSent, dump(tr.states(ns)))
		}
		if synSent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CLOSE->SYN_SENT with local port %d while the connect is pending:\n%s",
				cport, dump(tr.states(ns)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The socket still waits for an answer, as the kernel says.
	var info *unix.TCPInfo
	if err := ns.do(func() (err error) {
		info, err = unix.GetsockoptTCPInfo(fds[len(fds)-1], unix.IPPROTO_TCP, unix.TCP_INFO)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if info.State != 2 { // TCP_SYN_SENT
		t.Fatalf("client socket in state %d, want SYN_SENT (2): the SYN was answered", info.State)
	}
	tr.stopClean()
	return tr
}

// TestSynSentOfBlockedConnect: a connect() that blocks returns only when its
// handshake ends; to a peer that never answers (here a listener whose accept
// queue is full, so the kernel drops every SYN) that is minutes later. Its
// CLOSE->SYN_SENT must arrive while it is still blocked, with its local
// port, and only once: by the walk of held events (-v names it), on the best
// walk and on the run-on-demand one (raw_tp forced, where the kernel has
// bpf_for_each_map_elem).
func TestSynSentOfBlockedConnect(t *testing.T) {
	needRoot(t)
	for i, kind := range []string{"default", "raw_tp"} {
		t.Run(kind, func(t *testing.T) {
			args := []string{"-v", "--events", "states"}
			if kind != "default" {
				args = append(args, "--hook-kind", kind)
			}
			blockedConnect(t, 7315+i, args...)
		})
	}
}

func blockedConnect(t *testing.T, port int, args ...string) {
	ns := newNetNS(t)
	tr := startTracer(t, args...)
	walk := activeHook(tr.stderrText(), "blocking connects")
	t.Logf("walk: %q", walk)
	if slices.Contains(args, "raw_tp") {
		if byRun := strings.HasPrefix(walk, "raw_tp/"); byRun != kernelHasSymbol(t, "bpf_for_each_map_elem") {
			t.Fatalf("raw_tp forced: walk %q, but the kernel has bpf_for_each_map_elem: %v", walk, !byRun)
		} else if !byRun {
			return // nothing to force it onto: the default run covers this kernel
		}
	} else if walk == "" {
		t.Fatalf("-v names no active hook for blocking connects:\n%s", tr.stderrText())
	}
	var (
		lfd, fd = -1, -1
		conns   []net.Conn
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		for _, fd := range []int{lfd, fd} {
			if fd >= 0 {
				syscall.Close(fd)
			}
		}
	})
	addr := &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	err := ns.do(func() (err error) {
		if lfd, err = fullListener(port, &conns); err != nil {
			return err
		}
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0) // blocking
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan error, 1)
	go func() { returned <- syscall.Connect(fd, addr) }()

	// The port, once connect() has picked it.
	cport := 0
	deadline := time.Now().Add(waitLong)
	for cport == 0 {
		if sa, err := syscall.Getsockname(fd); err == nil {
			cport = sa.(*syscall.SockaddrInet4).Port
		}
		if time.Now().After(deadline) {
			t.Fatal("connect() picked no local port")
		}
		time.Sleep(10 * time.Millisecond)
	}
	synSents := func() (n int, closed bool) {
		for _, r := range tr.states(ns) {
			if int(r.LPort) == cport && r.RPort == uint16(port) {
				if r.OldState == "CLOSE" && r.NewState == "SYN_SENT" {
					n++
				}
				closed = closed || r.NewState == "CLOSE"
			}
		}
		return n, closed
	}
	for {
		select {
		case err := <-returned:
			t.Fatalf("connect() returned (%v) before the test ended it: the SYN was answered", err)
		default:
		}
		if n, _ := synSents(); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CLOSE->SYN_SENT with local port %d while connect() blocks:\n%s", cport, dump(tr.states(ns)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Still blocked, as the kernel says.
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != 2 { // TCP_SYN_SENT
		t.Fatalf("client socket in state %d, want SYN_SENT (2)", info.State)
	}
	// End it: with the listener gone, the SYN's next retransmission is
	// refused. (shutdown() would be quicker, but kernels with the fix
	// "tcp: deny tcp_disconnect() when threads are waiting" refuse it.)
	if err := syscall.Close(lfd); err != nil {
		t.Fatal(err)
	}
	lfd = -1
	select {
	case err := <-returned:
		if err != syscall.ECONNREFUSED {
			t.Fatalf("connect() returned %v, want %v", err, syscall.ECONNREFUSED)
		}
	case <-time.After(waitLong):
		t.Fatal("connect() still blocked after the listener closed")
	}
	for {
		n, closed := synSents()
		if closed {
			if n != 1 {
				t.Fatalf("%d CLOSE->SYN_SENT records of local port %d, want 1:\n%s", n, cport, dump(tr.states(ns)))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no change to CLOSE of local port %d after connect() failed:\n%s", cport, dump(tr.states(ns)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	tr.stopClean()
}

// fullListener listens on 127.0.0.1:port with a backlog of 1 and fills its
// accept queue with two connections, never accepted (added to conns): the
// kernel drops the SYNs of the next ones. A raw listener, closed by its
// caller alone (an *os.File's finalizer would close its number again,
// whatever it then is); -1 if none was made.
func fullListener(port int, conns *[]net.Conn) (int, error) {
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return lfd, err
	}
	if err := syscall.Listen(lfd, 1); err != nil {
		return lfd, err
	}
	for range 2 {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return lfd, err
		}
		*conns = append(*conns, c)
	}
	return lfd, nil
}
