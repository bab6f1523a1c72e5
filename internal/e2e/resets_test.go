package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runResets makes this host send one reset of each kind and says, per kind,
// "KIND LPORT RPORT ERRNO": the ends of the socket that sent it (or, for
// "closed", the ends the reset went between) and the error the other side's
// application got. "unread": the server closes with data unread (an abort);
// "linger": the client closes with SO_LINGER 0; "closed": a connect to
// port+1, where no socket listens; "timewait": the client shuts down its
// sending side, then closes in FIN_WAIT2, which hands the connection to a
// timewait socket, and the server's data after that meets that socket,
// which resets. Then "done", and it stays until "exit".
func runResets(in *bufio.Reader, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	port := func(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }

	c, s, err := dialAccept(ln)
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte("unread")); err != nil {
		return err
	}
	if err := waitUnread(s); err != nil {
		return err
	}
	s.Close()
	_, err = c.Read(make([]byte, 1))
	fmt.Printf("unread %d %d %s\n", ap.Port(), port(c), errnoName(err))
	c.Close()

	if c, s, err = dialAccept(ln); err != nil {
		return err
	}
	c.SetLinger(0)
	c.Close()
	_, err = s.Read(make([]byte, 1))
	fmt.Printf("linger %d %d %s\n", port(c), ap.Port(), errnoName(err))
	s.Close()

	p, fd, err := connectOnce(ap.Addr(), ap.Port()+1)
	syscall.Close(fd)
	fmt.Printf("closed %d %d %s\n", ap.Port()+1, p, errnoName(err))

	if c, s, err = dialAccept(ln); err != nil {
		return err
	}
	// Closed at once, the client's FIN would be acknowledged while close()
	// holds the socket, and the socket, a full one still, would meet the
	// data (an abort, TCPAbortOnData).
	c.CloseWrite()
	if _, err := s.Read(make([]byte, 1)); err != io.EOF {
		return fmt.Errorf("timewait: the server read %v, want EOF", err)
	}
	if err := waitState(c, unix.BPF_TCP_FIN_WAIT2); err != nil {
		return fmt.Errorf("timewait: %w", err)
	}
	c.Close()
	// The first write goes out; the reset it draws fails a later one.
	for deadline := time.Now().Add(10 * time.Second); err == nil && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		_, err = s.Write([]byte("late"))
	}
	fmt.Printf("timewait %d %d %s\n", port(c), ap.Port(), errnoName(err))
	s.Close()

	if err := resetOnOverflow(netip.AddrPortFrom(ap.Addr(), ap.Port()+2)); err != nil {
		return fmt.Errorf("overflow: %w", err)
	}

	fmt.Println("done")
	waitLine(in, "exit")
	return nil
}

// resetOnOverflow draws resets from a listener at addr and its accept queue
// (net.ipv4.tcp_abort_on_overflow set). "overflow": a handshake's final ACK,
// held back by the client (TCP_DEFER_ACCEPT), finds the backlog-1 accept
// queue filled by two plain connections meanwhile, and the listener answers
// it with a reset (its request socket's). "purge1", "purge2": the listener
// closes with those two never accepted, and each is reset.
func resetOnOverflow(addr netip.AddrPort) error {
	lfd, err := listenBacklog(addr.String(), 1, false)
	if err != nil {
		return err
	}
	sa, err := sockaddr(addr.String())
	if err != nil {
		return err
	}
	fd, err := deferredConnect(sa, true)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var queued []net.Conn
	for range 2 {
		c, err := net.Dial("tcp4", addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		queued = append(queued, c)
	}
	// The held-back ACK goes out ~200 ms later; the reset fails a read.
	err = syscall.EAGAIN
	for deadline := time.Now().Add(10 * time.Second); err == syscall.EAGAIN && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		_, err = syscall.Read(fd, make([]byte, 1))
	}
	local, err2 := syscall.Getsockname(fd)
	if err2 != nil {
		return err2
	}
	fmt.Printf("overflow %d %d %s\n", addr.Port(), local.(*syscall.SockaddrInet4).Port, errnoName(err))

	syscall.Close(lfd)
	for i, c := range queued {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		fmt.Printf("purge%d %d %d %s\n", i+1, addr.Port(), c.LocalAddr().(*net.TCPAddr).Port, errnoName(err))
	}
	return nil
}

// waitState waits until c's TCP state is state.
func waitState(c *net.TCPConn, state uint8) error {
	var info *unix.TCPInfo
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		err := control(c, func(fd int) (err error) {
			info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			return err
		})
		if err != nil || info.State == state {
			return err
		}
	}
	return fmt.Errorf("the socket stayed in state %d, not %d", info.State, state)
}

// waitUnread waits until data waits in c's receive queue.
func waitUnread(c *net.TCPConn) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		n := 0
		err := control(c, func(fd int) (err error) {
			n, err = unix.IoctlGetInt(fd, unix.SIOCINQ)
			return err
		})
		if err != nil || n > 0 {
			return err
		}
	}
	return errors.New("no data arrived to leave unread")
}

// TestResetsSent: with --events resets, each reset this host sends is one
// record: an abort's (close with data unread, SO_LINGER 0) names the socket,
// its owner and its state, and a reset for a segment no socket took (a closed
// port) names the ends it went between and no socket, one a timewait
// socket sent (data after the peer's close) its ends and TIME_WAIT but no
// socket or owner. With net.ipv4.tcp_abort_on_overflow set, a final ACK
// that finds the accept queue full draws a reset from the listener (named
// with its owner, in LISTEN, the ends the packet's), and the connections
// left in the queue are reset as the listener closes (CLOSE, the listener's
// owner). Kernels whose tracepoint passes no reason fire it for
// full sockets only: there those two come from tcp_v4_send_reset() (fentry,
// or a forced kprobe where the kernel has kprobes), and from the tracepoint
// alone they are missing, as the hook says ("full sockets only"). The
// kernel's reason is there where the hook says "(reason)". Their number
// matches the namespace's OutRsts; on every hook path at once; --pid of
// another process gets none.
func TestResetsSent(t *testing.T) {
	needRoot(t)
	const port = 7071
	ns := newNetNS(t)
	tracers := startTracerPerHook(t, "--events", "resets", "-v")
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err == nil {
		tracers["kprobe"] = startTracer(t, "--events", "resets", "-v", "--hook-kind", "kprobe")
	}
	other := startTracer(t, "--events", "resets", "--pid", "1")
	if err := ns.sysctl("net/ipv4/tcp_abort_on_overflow", "1"); err != nil {
		t.Fatal(err)
	}
	before := nsCounters(t, ns)
	w := startRole(t, ns, "resets", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()

	type reset struct {
		lport, rport uint16
		state        string // the sender's
		reason       string // the kernel's, where it gives one; "" not checked
		full         bool   // sent by a full socket: it and its owner named
	}
	want := map[string]reset{}
	for _, c := range []struct {
		kind, errno, state, reason string
		full                       bool
	}{
		{"unread", "ECONNRESET", "CLOSE", "", true}, {"linger", "ECONNRESET", "CLOSE", "", true},
		{"closed", "ECONNREFUSED", "", "no_socket", false},
		{"timewait", "EPIPE|ECONNRESET", "TIME_WAIT", "tcp_timewait_socket", false},
		{"overflow", "ECONNRESET", "LISTEN", "", true},
		{"purge1", "ECONNRESET", "CLOSE", "", true}, {"purge2", "ECONNRESET", "CLOSE", "", true},
	} {
		fs := strings.Fields(w.expectWithin(c.kind, 30*time.Second))
		if len(fs) != 3 || !slices.Contains(strings.Split(c.errno, "|"), fs[2]) {
			t.Fatalf("%s: the other side got %q, want %s: the workload did not do what the test needs", c.kind, fs, c.errno)
		}
		l, err1 := strconv.ParseUint(fs[0], 10, 16)
		r, err2 := strconv.ParseUint(fs[1], 10, 16)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		want[c.kind] = reset{uint16(l), uint16(r), c.state, c.reason, c.full}
	}
	w.expect("done")
	if d := nsCounters(t, ns)["OutRsts"] - before["OutRsts"]; d != uint64(len(want)) {
		t.Fatalf("OutRsts grew by %d, want %d: the workload did not do what the test needs", d, len(want))
	}

	for kind, tr := range tracers {
		hook := activeHook(tr.stderrText(), "resets")
		fullOnly := strings.HasSuffix(hook, " (full sockets only)")
		reasons := strings.HasSuffix(hook, " (reason)")
		t.Logf("%s: resets via %s", kind, hook)
		n := len(want)
		if fullOnly {
			n -= 2 // not the closed port's, not the timewait socket's
		}
		var got []record
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if got = tr.records("reset", ns); len(got) >= n || time.Now().After(deadline) {
				break
			}
		}
		if len(got) != n {
			t.Errorf("%s: %d reset records, want %d (OutRsts %d, via %s):\n%s", kind, len(got), n, len(want), hook, dump(got))
			continue
		}
		for what, wr := range want {
			if !wr.full && fullOnly {
				continue
			}
			var r *record
			for i := range got {
				if got[i].LPort == wr.lport && got[i].RPort == wr.rport {
					r = &got[i]
				}
			}
			switch {
			case r == nil:
				t.Errorf("%s: no reset record %d -> %d (%s):\n%s", kind, wr.lport, wr.rport, what, dump(got))
			case wr.full && (r.PID != w.pid() || r.State != wr.state || r.Sock == ""):
				// An abort closes the socket first, then sends the reset.
				t.Errorf("%s: %s: %s, want owner %d, state %s, a socket", kind, what, r, w.pid(), wr.state)
			case !wr.full && (r.PID != 0 || r.State != wr.state || r.Sock != "" || reasons && r.Reason != wr.reason):
				t.Errorf("%s: %s: %s, want no owner or socket, state %q, and the reason %s where the kernel gives one",
					kind, what, r, wr.state, wr.reason)
			case reasons == (r.Reason == "") || r.Reason == "unknown":
				t.Errorf("%s: %s: reason %q; the kernel gives one: %v", kind, what, r.Reason, reasons)
			case r.LAddr != "127.0.0.1" || r.RAddr != "127.0.0.1":
				t.Errorf("%s: %s: ends %s -> %s, want loopback's", kind, what, r.LAddr, r.RAddr)
			}
		}
	}
	if rs := other.records("reset", ns); len(rs) != 0 {
		t.Errorf("--pid 1: %d reset records of the workload's:\n%s", len(rs), dump(rs))
	}
}
