package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runCloseErrors ends one connection of each kind and says, per kind, the
// client's port and the error its application got ("-" for none):
// "reset" (the server aborts; the client's read gets ECONNRESET), "epipe"
// (the server closes, the client writes into the dead connection until its
// write gets EPIPE), "graceful" (the client closes first), "refused" (a
// connect to port+1, where nothing listens), "timeout" (a connect with one
// SYN retry to port+2, whose listener never accepts and has backlog 0: with
// syncookies off it drops SYNs once its queue is full; "timeout" lines until
// one connect got ETIMEDOUT, and another after an "again" line). Then "done",
// and it stays until "exit".
func runCloseErrors(in *bufio.Reader, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	pair := func() (c, s *net.TCPConn, err error) { return dialAccept(ln) }
	say := func(kind string, port int, err error) { fmt.Printf("%s %d %s\n", kind, port, errnoName(err)) }
	port := func(c net.Conn) int { return c.LocalAddr().(*net.TCPAddr).Port }

	c, s, err := pair()
	if err != nil {
		return err
	}
	s.SetLinger(0) // close sends a reset
	s.Close()
	_, err = c.Read(make([]byte, 1))
	say("reset", port(c), err)
	c.Close()

	if c, s, err = pair(); err != nil {
		return err
	}
	s.Close()
	if err := waitTCPState(c, unix.BPF_TCP_CLOSE_WAIT); err != nil {
		return err
	}
	// The first write goes out and is answered with a reset; a write after it fails.
	for deadline := time.Now().Add(10 * time.Second); err == nil && time.Now().Before(deadline); {
		_, err = c.Write([]byte("x"))
		time.Sleep(10 * time.Millisecond)
	}
	say("epipe", port(c), err)
	c.Close()

	if c, s, err = pair(); err != nil {
		return err
	}
	c.Close()
	if _, err := io.Copy(io.Discard, s); err != nil {
		return err
	}
	s.Close()
	say("graceful", port(c), nil)

	// No listener at port+1.
	p, fd, err := connectOnce(ap.Addr(), ap.Port()+1)
	syscall.Close(fd)
	say("refused", p, err)

	// A listener at port+2 that never accepts, with backlog 0: its queue
	// takes one connection or none (kernels differ), then drops SYNs. The
	// connections it takes stay open till exit, so none ends before "done".
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Port: int(ap.Port() + 2), Addr: ap.Addr().As4()}); err != nil {
		return err
	}
	if err := syscall.Listen(lfd, 0); err != nil {
		return err
	}
	for taken := 0; taken < 3; {
		p, fd, err := connectOnce(ap.Addr(), ap.Port()+2)
		say("timeout", p, err)
		if err == nil {
			defer syscall.Close(fd)
			taken++
			continue
		}
		syscall.Close(fd)
		// The test asks for another when no tracer saw this one.
		if line, err := in.ReadString('\n'); err != nil || strings.TrimSpace(line) != "again" {
			break
		}
	}

	fmt.Println("done")
	waitLine(in, "exit")
	return nil
}

// dialAccept makes one loopback connection to ln: its client and server ends.
func dialAccept(ln net.Listener) (c, s *net.TCPConn, err error) {
	cc, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	sc, err := ln.Accept()
	if err != nil {
		cc.Close()
		return nil, nil, err
	}
	return cc.(*net.TCPConn), sc.(*net.TCPConn), nil
}

// errnoName names the errno in err as the C library does, "-" for none.
func errnoName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return "-"
}

// connectOnce connects a new socket bound to addr:0 to addr:port with one
// SYN retry (a timeout after about 3 s) and returns its local port, the
// socket and connect()'s error.
func connectOnce(addr netip.Addr, port uint16) (int, int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		return 0, -1, err
	}
	if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, unix.TCP_SYNCNT, 1); err != nil {
		return 0, fd, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: addr.As4()}); err != nil {
		return 0, fd, err
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return 0, fd, err
	}
	return sa.(*syscall.SockaddrInet4).Port, fd, syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(port), Addr: addr.As4()})
}

// TestCloseErrors: a change into CLOSE names the error the socket died of,
// the one its application got (the client's read, write or connect), and
// none where the socket closed without one (the application's own abort, a
// graceful close); with the namespace's EstabResets and AttemptFails
// counters to show the workload did what it says; on every hook path at once;
// and --errors delivers exactly the closes with an error.
func TestCloseErrors(t *testing.T) {
	needRoot(t)
	const port = 7041
	ns := newNetNS(t)
	if err := ns.sysctl("net/ipv4/tcp_syncookies", "0"); err != nil {
		t.Fatal(err)
	}
	kinds := hookKinds
	tracers := startTracerPerHook(t, "--events", "states", "--state", "CLOSE")
	// --errors: the closes with an error, filtered in BPF.
	errs := startTracer(t, "--events", "states", "--errors")
	before := nsCounters(t, ns)
	w := startRole(t, ns, "closeerr", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()

	// What each client socket's application got, and what each change into
	// CLOSE must say: "lport rport" -> error ("" for none).
	want := map[string]string{}
	from := map[string]string{} // the old state the test means to produce
	for _, c := range []struct{ kind, want, serverWant, from, serverFrom string }{
		{"reset", "ECONNRESET", "", "ESTABLISHED", "ESTABLISHED"},
		{"epipe", "EPIPE", "", "CLOSE_WAIT", "FIN_WAIT2"},
		{"graceful", "-", "", "FIN_WAIT2", "LAST_ACK"},
		{"refused", "ECONNREFUSED", "", "SYN_SENT", ""},
	} {
		fs := strings.Fields(w.expectWithin(c.kind, 30*time.Second))
		if len(fs) != 2 || fs[1] != c.want {
			t.Fatalf("%s: the application got %q, want %s: the workload did not do what the test needs", c.kind, fs, c.want)
		}
		rport := port
		if c.kind == "refused" {
			rport = port + 1
		}
		key := fmt.Sprintf("%s %d", fs[0], rport)
		want[key], from[key] = strings.TrimPrefix(c.want, "-"), c.from
		if c.serverFrom != "" {
			key = fmt.Sprintf("%d %s", port, fs[0])
			want[key], from[key] = c.serverWant, c.serverFrom
		}
	}

	// The timeout's CLOSE comes from a timer. On some machines a change the
	// kernel makes in a softirq now and then reaches no BPF program at all
	// (README: the known defect), and then no tracer has it: that connect is
	// tried again, up to three times. (A tracer missing what another got
	// still fails below.)
	missed := map[string]bool{} // timeouts no tracer saw: if one did later, it must be right
	timeouts := 0
	for {
		fs := strings.Fields(w.expectWithin("timeout", 30*time.Second))
		for len(fs) == 2 && fs[1] == "-" {
			fs = strings.Fields(w.expectWithin("timeout", 30*time.Second)) // one the queue took
		}
		if len(fs) != 2 || fs[1] != "ETIMEDOUT" {
			t.Fatalf("timeout: the application got %q, want ETIMEDOUT: the workload did not do what the test needs", fs)
		}
		timeouts++
		key := fmt.Sprintf("%s %d", fs[0], port+2)
		seen := false
		for deadline := time.Now().Add(5 * time.Second); !seen && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			for _, tr := range tracers {
				if got, _ := closesOf(tr, ns); got[key].NewState != "" {
					seen = true
				}
			}
		}
		if seen {
			want[key], from[key] = "ETIMEDOUT", "SYN_SENT"
			w.send("enough")
			break
		}
		if timeouts == 3 {
			t.Fatalf("timeout: no tracer got the change into CLOSE of any of 3 connects that timed out")
		}
		t.Logf("timeout: no tracer got the change into CLOSE of %s; again", key)
		missed[key], from[key] = true, "SYN_SENT"
		w.send("again")
	}
	w.expect("done")

	after := nsCounters(t, ns)
	for name, n := range map[string]uint64{
		"EstabResets":  3,                    // the reset client, the aborting server, the epipe client
		"AttemptFails": 1 + uint64(timeouts), // refused, timeouts
	} {
		if d := after[name] - before[name]; d != n {
			t.Errorf("%s grew by %d, want %d: the workload did not do what the test expects", name, d, n)
		}
	}

	// Every change into CLOSE of the connections, read once each tracer has
	// stopped (the last started first: it may have mounted tracefs).
	for _, kind := range kinds {
		tr := tracers[kind]
		for deadline := time.Now().Add(waitLong); time.Now().Before(deadline); {
			if got, _ := closesOf(tr, ns); len(got) >= len(want) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	errs.stopClean()
	stopTracersPerHook(tracers)
	// --errors: one record per socket whose close had an error, and no other.
	withError := 0
	for _, e := range want {
		if e != "" {
			withError++
		}
	}
	seen := map[string]bool{}
	for _, r := range errs.states(ns) {
		key := fmt.Sprintf("%d %d", r.LPort, r.RPort)
		we := want[key]
		if missed[key] {
			we = "ETIMEDOUT"
		}
		if r.Error == nil || *r.Error != we || seen[key] || r.NewState != "CLOSE" {
			t.Errorf("--errors delivered %s", r)
		}
		if !missed[key] {
			seen[key] = true
		}
	}
	if len(seen) != withError {
		t.Errorf("--errors delivered %d sockets, want %d:\n%s", len(seen), withError, dump(errs.states(ns)))
	}
	for _, kind := range kinds {
		got, n := closesOf(tracers[kind], ns)
		for key, r := range got {
			e := ""
			if r.Error != nil {
				e = *r.Error
			}
			we, ok := want[key]
			if missed[key] {
				we, ok = "ETIMEDOUT", true
				delete(got, key)
				n--
			}
			if !ok || e != we || r.OldState != from[key] || r.NewState != "CLOSE" || r.PID != w.pid() {
				t.Errorf("%s: error %q from %s, want %q from %s, owner %d: %s", kind, e, r.OldState, we, from[key], w.pid(), r)
			}
		}
		if len(got) != len(want) || n != len(got) {
			t.Errorf("%s: %d changes into CLOSE of %d sockets, want one each of %d:\n%s",
				kind, n, len(got), len(want), dump(tracers[kind].states(ns)))
		}
	}
}

// closesOf returns tr's changes into CLOSE in ns but listeners', by
// "lport rport", and how many there were.
func closesOf(tr *tracerProc, ns *netNS) (map[string]record, int) {
	out, n := map[string]record{}, 0
	for _, r := range tr.states(ns) {
		if r.OldState != "LISTEN" {
			out[fmt.Sprintf("%d %d", r.LPort, r.RPort)] = r
			n++
		}
	}
	return out, n
}

// runExhaust connects to addr, keeping every connection open, until a
// connect() fails (the test leaves its namespace two ephemeral ports), and
// says "exhausted N ERRNO" with N the connections made. One connect() per
// socket: Go's net.Dial would try twice more on EADDRNOTAVAIL. Then it stays
// until "exit".
func runExhaust(in *bufio.Reader, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	var errno syscall.Errno
	n := 0
	for ; n < 100; n++ { // past any range a test sets
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
			if !errors.As(err, &errno) {
				return err
			}
			break
		}
	}
	fmt.Printf("exhausted %d %s\n", n, unix.ErrnoName(errno))
	waitLine(in, "exit")
	return nil
}

// TestPortExhaustion: a connect() that finds no free ephemeral port fails
// with EADDRNOTAVAIL and sets no socket error; its change into CLOSE must
// still say EADDRNOTAVAIL, with the owner and the destination, and
// --errors must deliver it, on every hook path.
func TestPortExhaustion(t *testing.T) {
	needRoot(t)
	const port = 7051
	ns := newNetNS(t)
	if err := ns.sysctl("net/ipv4/ip_local_port_range", "40000 40001"); err != nil {
		t.Fatal(err)
	}
	kinds := hookKinds
	tracers := startTracerPerHook(t, "--events", "states", "--errors")
	w := startRole(t, ns, "exhaust", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()
	if got := w.expect("exhausted"); got != "2 EADDRNOTAVAIL" {
		t.Fatalf("the workload's connects: %q, want 2 made, then EADDRNOTAVAIL", got)
	}
	for i := len(kinds) - 1; i >= 0; i-- {
		tracers[kinds[i]].waitStates(ns, 1)
		tracers[kinds[i]].stopClean()
	}
	for _, kind := range kinds {
		got := tracers[kind].states(ns)
		if len(got) != 1 {
			t.Errorf("%s: %d records, want the failed connect's:\n%s", kind, len(got), dump(got))
			continue
		}
		r := got[0]
		if r.Error == nil || *r.Error != "EADDRNOTAVAIL" || r.OldState != "SYN_SENT" || r.NewState != "CLOSE" ||
			r.LPort != 0 || r.RPort != port || r.RAddr != "127.0.0.1" || r.PID != w.pid() {
			t.Errorf("%s: %s, want SYN_SENT -> CLOSE, EADDRNOTAVAIL, port 0 to 127.0.0.1:%d, owner %d", kind, r, port, w.pid())
		}
	}
}
