package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runDeadPeer makes, for each "keepalive" or "stalled" line on stdin, one
// connection to a peer that has gone silent: the server's socket drops every
// packet that reaches it (a socket filter that takes none), as a dead host
// would. "keepalive": the client, with keepalive probes after 1 s, 1 s apart,
// 2 of them, waits to read; "stalled": the client, with a 1.5 s
// TCP_USER_TIMEOUT, writes and waits to read while its data is retransmitted.
// "blackhole": the client's own socket drops every packet, so its handshake
// never completes: its SYN is retransmitted until TCP_SYNCNT 1 gives up (twice
// on 6.18: the test counts, it does not assume) and the server's SYN-ACK
// until the request expires (see TestHandshakeRetransmits).
// "open" makes a "stalled" connection but only says "open PORT"; "stall"
// writes on the oldest one opened, as "stalled" does, and says what
// "stalled" says: a connection made before the tracer starts.
// It says "KIND PORT ERRNO RETRANS": the client's local port, what its read
// got, and the segments it retransmitted (TCP_INFO's total_retrans, read
// once the socket is closed); "blackhole" says "KIND PORT ERRNO", its
// connect()'s error (the failed connect() has cleared its TCP_INFO). The
// server sockets stay open until "exit".
func runDeadPeer(in *bufio.Reader, addr string) error {
	// Plain TCP: a socket filter on an MPTCP socket (Go's default for
	// listeners) would not reach its subflow.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	var opened []*net.TCPConn
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return err
		}
		kind := strings.TrimSpace(line)
		if kind == "exit" {
			return nil
		}
		if kind == "blackhole" {
			if err := blackholeConnect(ln.Addr().(*net.TCPAddr)); err != nil {
				return err
			}
			continue
		}
		var c *net.TCPConn
		switch kind {
		case "keepalive", "stalled", "open":
			var sc net.Conn
			if c, sc, err = deadPeerConn(ln, addr, kind == "keepalive"); err != nil {
				return err
			}
			defer c.Close()
			defer sc.Close() // also keeps it from the collector, which would close it
		case "stall":
			if len(opened) == 0 {
				return errors.New("deadpeer: stall: no connection opened")
			}
			c, opened = opened[0], opened[1:]
		default:
			return fmt.Errorf("deadpeer: unknown command %q", kind)
		}
		if kind == "open" {
			opened = append(opened, c)
			fmt.Printf("open %d\n", c.LocalAddr().(*net.TCPAddr).Port)
			continue
		}
		if kind == "stalled" || kind == "stall" {
			if err := control(c, func(fd int) error {
				return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 1500)
			}); err != nil {
				return err
			}
			if _, err := c.Write([]byte("x")); err != nil {
				return err
			}
		}
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = c.Read(make([]byte, 1))
		name := "-"
		var errno syscall.Errno
		if errors.As(err, &errno) {
			name = unix.ErrnoName(errno)
		}
		var info *unix.TCPInfo
		if err := control(c, func(fd int) (err error) {
			info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			return err
		}); err != nil {
			return err
		}
		fmt.Printf("%s %d %s %d\n", kind, c.LocalAddr().(*net.TCPAddr).Port, name, info.Total_retrans)
	}
}

// deadPeerConn connects to ln at addr, with keepalive probes after 1 s, 1 s
// apart, 2 of them, if keepalive, and makes the server's end drop all it
// receives. It returns both ends.
func deadPeerConn(ln net.Listener, addr string, keepalive bool) (*net.TCPConn, net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	if keepalive {
		d.KeepAlive = 0
		d.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: 2}
	}
	cc, err := d.Dial("tcp4", addr)
	if err != nil {
		return nil, nil, err
	}
	c := cc.(*net.TCPConn)
	sc, err := ln.Accept()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	if err := control(sc.(*net.TCPConn), dropAll); err != nil {
		c.Close()
		sc.Close()
		return nil, nil, fmt.Errorf("attach the drop filter: %w", err)
	}
	return c, sc, nil
}

// dropAll makes the socket fd drop every packet that reaches it (a classic
// socket filter that accepts nothing), as a dead host would.
func dropAll(fd int) error {
	drop := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: 1, Filter: &drop[0]})
}

// blackholeConnect connects to srv from a socket that drops all it receives
// (the SYN-ACKs), with few SYN retransmissions, and waits for the server's
// request to expire before it reports (tcp_synack_retries is the test's).
func blackholeConnect(srv *net.TCPAddr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := dropAll(fd); err != nil {
		return err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_SYNCNT, 1); err != nil {
		return err
	}
	// Bound first, so the port is known after the connect() fails.
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return err
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: srv.Port, Addr: [4]byte(srv.IP.To4())})
	name := "-"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		name = unix.ErrnoName(errno)
	}
	time.Sleep(2 * time.Second) // the request's last SYN-ACK timer
	fmt.Printf("blackhole %d %s\n", sa.(*unix.SockaddrInet4).Port, name)
	return nil
}

// control runs f on c's file descriptor.
func control(c *net.TCPConn, f func(fd int) error) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// TestDeadPeer: a connection whose peer went silent dies of ETIMEDOUT, and
// its change into CLOSE says so, with the segments it retransmitted: when
// keepalive probes ran out (none retransmitted) and when its data's
// retransmissions did (TCP_USER_TIMEOUT). Each retransmission is a record
// of its own as it happens (--events retransmits), counting up, owned by the
// client; keepalive probes are none. Ground truth: what the client's read
// got, its TCP_INFO, and the namespace's RetransSegs, which must have grown
// by those retransmissions exactly. On every hook path at once.
func TestDeadPeer(t *testing.T) {
	needRoot(t)
	const port = 7061
	ns := newNetNS(t)
	kinds := hookKinds
	tracers := startTracerPerHook(t, "--events", "states,retransmits", "--state", "CLOSE")
	before := nsCounters(t, ns)
	w := startRole(t, ns, "deadpeer", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()

	// The clients' changes into CLOSE ("PORT" -> what it must say), and the
	// retransmissions of every client, including those tried again.
	type dead struct {
		retrans uint32
		missed  bool // no tracer got it in time: it was tried again
	}
	want := map[uint16]dead{}
	var retransmitted uint64
	clientCloses := func(tr *tracerProc) map[uint16][]record {
		out := map[uint16][]record{}
		for _, r := range tr.states(ns) {
			if r.RPort == port {
				out[r.LPort] = append(out[r.LPort], r)
			}
		}
		return out
	}
	for _, kind := range []string{"keepalive", "stalled"} {
		// The change into CLOSE comes from a timer: as in TestCloseErrors, a
		// connection no tracer got in time (the known defect) is made again,
		// up to three times.
		for try := 1; ; try++ {
			w.send(kind)
			fs := strings.Fields(w.expectWithin(kind, 30*time.Second))
			if len(fs) != 3 || fs[1] != "ETIMEDOUT" {
				t.Fatalf("%s: the client got %q, want ETIMEDOUT: the workload did not do what the test needs", kind, fs)
			}
			lport, err := strconv.ParseUint(fs[0], 10, 16)
			if err != nil {
				t.Fatal(err)
			}
			n, err := strconv.ParseUint(fs[2], 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			if (kind == "keepalive") != (n == 0) {
				t.Fatalf("%s: the client retransmitted %d segments: the workload did not do what the test needs", kind, n)
			}
			retransmitted += n
			seen := false
			for deadline := time.Now().Add(5 * time.Second); !seen && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
				for _, tr := range tracers {
					if len(clientCloses(tr)[uint16(lport)]) > 0 {
						seen = true
					}
				}
			}
			want[uint16(lport)] = dead{retrans: uint32(n), missed: !seen}
			if seen {
				break
			}
			if try == 3 {
				t.Fatalf("%s: no tracer got the change into CLOSE of any of 3 connections that timed out", kind)
			}
			t.Logf("%s: no tracer got the change into CLOSE of port %d; again", kind, lport)
		}
	}
	// Before the server sockets close (their FINs, answered by resets the
	// filter drops, would be retransmitted).
	after := nsCounters(t, ns)
	if d := after["RetransSegs"] - before["RetransSegs"]; d != retransmitted {
		t.Errorf("RetransSegs grew by %d, the clients' TCP_INFO says %d", d, retransmitted)
	}
	stopTracersPerHook(tracers)
	w.exit()

	for _, kind := range kinds {
		got := clientCloses(tracers[kind])
		for lport, c := range want {
			rs := got[lport]
			if len(rs) == 0 && c.missed {
				continue
			}
			if len(rs) != 1 {
				t.Errorf("%s: port %d: %d changes into CLOSE, want 1:\n%s", kind, lport, len(rs), dump(tracers[kind].states(ns)))
				continue
			}
			r := rs[0]
			if r.Error == nil || *r.Error != "ETIMEDOUT" || r.Retrans == nil || *r.Retrans != c.retrans ||
				r.OldState != "ESTABLISHED" || r.PID != w.pid() {
				t.Errorf("%s: %s, want ESTABLISHED -> CLOSE, ETIMEDOUT, %d retransmitted, owner %d", kind, r, c.retrans, w.pid())
			}
		}
		if len(got) > len(want) {
			t.Errorf("%s: changes into CLOSE of %d client sockets, want %d:\n%s", kind, len(got), len(want), dump(tracers[kind].states(ns)))
		}

		// Retransmissions as they happened: the server sockets made none
		// while the tracers ran, each client as many as its TCP_INFO says.
		rs := tracers[kind].records("retransmit", ns)
		byPort := map[uint16][]record{}
		for _, r := range rs {
			if _, ok := want[r.LPort]; !ok || r.RPort != port {
				t.Errorf("%s: a retransmission of a socket no client owns: %s", kind, r)
				continue
			}
			byPort[r.LPort] = append(byPort[r.LPort], r)
		}
		for lport, c := range want {
			got := byPort[lport]
			if c.missed && len(got) == 0 {
				continue
			}
			checkRetransmits(t, kind, lport, got, uint64(c.retrans), w.pid())
		}
	}
}

// TestHandshakeRetransmits: a handshake whose SYN-ACKs never arrive (the
// client's socket drops them) retransmits on both ends: the client's SYN,
// as SYN_SENT records of the client's socket, and the server's SYN-ACK, as
// SYN_RECV records of the handshake to the listener (a tracepoint of its
// own), owned by the listener's process, each kind counting up from 1.
// Ground truth: the namespace's RetransSegs, which the two kinds of record
// must add up to exactly. On every hook path at once.
func TestHandshakeRetransmits(t *testing.T) {
	needRoot(t)
	const port = 7062
	ns := newNetNS(t)
	// The server's request gives up after one SYN-ACK timeout, so it is gone
	// (and its count final) soon after the client gives up.
	if err := ns.sysctl("net/ipv4/tcp_synack_retries", "1"); err != nil {
		t.Fatal(err)
	}
	tracers := startTracerPerHook(t, "--events", "retransmits")
	// --pid applies to retransmissions: another process's see none.
	other := startTracer(t, "--events", "retransmits", "--pid", "1")
	before := nsCounters(t, ns)
	w := startRole(t, ns, "deadpeer", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()

	w.send("blackhole")
	fs := strings.Fields(w.expectWithin("blackhole", 30*time.Second))
	if len(fs) != 2 || fs[1] != "ETIMEDOUT" {
		t.Fatalf("the client got %q, want ETIMEDOUT: the workload did not do what the test needs", fs)
	}
	lport, err := strconv.ParseUint(fs[0], 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	segs := nsCounters(t, ns)["RetransSegs"] - before["RetransSegs"]
	if segs < 2 {
		t.Fatalf("RetransSegs grew by %d, want a SYN and a SYN-ACK at least: the workload did not do what the test needs", segs)
	}
	for kind, tr := range tracers {
		var syns, acks []record
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			syns, acks = nil, nil
			for _, r := range tr.records("retransmit", ns) {
				switch {
				case r.LPort == uint16(lport) && r.RPort == port:
					syns = append(syns, r)
				case r.LPort == port && r.RPort == uint16(lport):
					acks = append(acks, r)
				default:
					t.Errorf("%s: a retransmission of neither end: %s", kind, r)
				}
			}
			if len(syns)+len(acks) >= int(segs) || time.Now().After(deadline) {
				break
			}
		}
		if len(syns) == 0 || len(acks) == 0 || len(syns)+len(acks) != int(segs) {
			t.Errorf("%s: %d SYN and %d SYN-ACK retransmit records, want some of each and %d in all (RetransSegs):\n%s",
				kind, len(syns), len(acks), segs, dump(tr.records("retransmit", ns)))
			continue
		}
		for what, rs := range map[string][]record{"SYN_SENT": syns, "SYN_RECV": acks} {
			for i, r := range rs {
				if r.State != what || r.Retrans == nil || *r.Retrans != uint32(i+1) || r.PID != w.pid() {
					t.Errorf("%s: retransmission %d in %s: %s, want retrans %d, owner %d", kind, i+1, what, r, i+1, w.pid())
				}
			}
		}
	}
	if rs := other.records("retransmit", ns); len(rs) != 0 {
		t.Errorf("--pid 1: %d retransmit records of the workload's sockets:\n%s", len(rs), dump(rs))
	}
}

// TestRetransmitsOfOlderConnection: tcptrace started in the middle of an
// incident. A connection made before it starts, whose peer then goes silent:
// each retransmission, and the change into CLOSE when TCP_USER_TIMEOUT runs
// out, name the connection's owner, which only the start-up scan can know
// (no earlier change of it was seen). Ground truth: the client's TCP_INFO
// and the namespace's RetransSegs. On every hook path at once.
func TestRetransmitsOfOlderConnection(t *testing.T) {
	needRoot(t)
	const port = 7063
	ns := newNetNS(t)
	w := startRole(t, ns, "deadpeer", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.exit()
	// Three, made before any tracer: as in TestDeadPeer, a connection whose
	// timeout no tracer got (the known defect) is followed by the next.
	const tries = 3
	for range tries {
		w.send("open")
		w.expectWithin("open", 10*time.Second)
	}
	tracers := startTracerPerHook(t, "--events", "states,retransmits", "--state", "CLOSE")
	before := nsCounters(t, ns)

	var lport uint16
	var retrans, total uint64
	for try := 1; ; try++ {
		w.send("stall")
		fs := strings.Fields(w.expectWithin("stall", 30*time.Second))
		if len(fs) != 3 || fs[1] != "ETIMEDOUT" || fs[2] == "0" {
			t.Fatalf("the client got %q, want ETIMEDOUT after retransmissions: the workload did not do what the test needs", fs)
		}
		p, err := strconv.ParseUint(fs[0], 10, 16)
		if err != nil {
			t.Fatal(err)
		}
		if retrans, err = strconv.ParseUint(fs[2], 10, 32); err != nil {
			t.Fatal(err)
		}
		total += retrans
		lport = uint16(p)
		closed := func(tr *tracerProc) bool {
			return slices.ContainsFunc(tr.states(ns), func(r record) bool { return r.LPort == lport && r.RPort == port })
		}
		seen := false
		for deadline := time.Now().Add(5 * time.Second); !seen && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, tr := range tracers {
				seen = seen || closed(tr)
			}
		}
		if seen {
			break
		}
		if try == tries {
			t.Fatalf("no tracer got the change into CLOSE of any of %d connections that timed out", tries)
		}
		t.Logf("no tracer got the change into CLOSE of port %d; the next connection", lport)
	}
	// Those stalled before count too; those never used sent nothing.
	after := nsCounters(t, ns)
	grew := after["RetransSegs"] - before["RetransSegs"]
	stopTracersPerHook(tracers)
	w.exit()

	for _, kind := range hookKinds {
		tr := tracers[kind]
		var closes, rs []record
		for _, r := range tr.states(ns) {
			if r.LPort == lport && r.RPort == port {
				closes = append(closes, r)
			}
		}
		for _, r := range tr.records("retransmit", ns) {
			if r.LPort == lport && r.RPort == port {
				rs = append(rs, r)
			}
		}
		if len(closes) == 0 {
			// This tracer missed it where another did not: only that change's
			// run can have been the defect's; the retransmissions still count.
			t.Logf("%s: no change into CLOSE of port %d", kind, lport)
		} else if r := closes[0]; len(closes) != 1 || r.OldState != "ESTABLISHED" || r.Error == nil || *r.Error != "ETIMEDOUT" ||
			r.Retrans == nil || uint64(*r.Retrans) != retrans || r.PID != w.pid() || r.Comm == "" {
			t.Errorf("%s: %d changes into CLOSE, first %s; want one, ESTABLISHED -> CLOSE, ETIMEDOUT, %d retransmitted, owner %d",
				kind, len(closes), r, retrans, w.pid())
		}
		checkRetransmits(t, kind, lport, rs, retrans, w.pid())
	}
	if grew != total {
		t.Errorf("RetransSegs grew by %d, the clients' TCP_INFO says %d", grew, total)
	}
}

// checkRetransmits checks the retransmit records of the client socket at
// lport: one per retransmission, each ESTABLISHED and owned by pid, their
// retrans counting up to want, the segments its TCP_INFO says it resent (by
// more than 1 where one retransmission resent several segments, as the
// kernel's total_retrans and RetransSegs count them).
func checkRetransmits(t *testing.T, kind string, lport uint16, rs []record, want uint64, pid int) {
	t.Helper()
	var count uint32 // the segments resent so far, as the records say
	for i, r := range rs {
		if r.State != "ESTABLISHED" || r.Retrans == nil || *r.Retrans <= count || r.PID != pid || r.Comm == "" {
			t.Errorf("%s: retransmission %d of port %d: %s, want ESTABLISHED, retrans above %d, owner %d", kind, i+1, lport, r, count, pid)
			continue
		}
		count = *r.Retrans
	}
	if uint64(count) != want {
		t.Errorf("%s: port %d: %d retransmit records counting up to %d, its TCP_INFO says %d:\n%s", kind, lport, len(rs), count, want, dump(rs))
	}
}
