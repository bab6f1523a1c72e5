package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/netns"
)

// runTimeWait makes n connections of each kind, to itself, and says the
// client's port of each: "client-first" (the client ends in TIME_WAIT),
// "server-first" (the server's socket does), "reset" (the client half-closes,
// sits in FIN_WAIT2 and gets a reset: no TIME_WAIT). Then "done", and it
// stays until "exit" so the test can read its namespace.
func runTimeWait(in *bufio.Reader, addr string, n int) error {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		for _, kind := range []string{"client-first", "server-first", "reset"} {
			c, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				return err
			}
			s, err := ln.Accept()
			if err != nil {
				return err
			}
			switch kind {
			case "client-first", "server-first":
				first, second := c, s
				if kind == "server-first" {
					first, second = s, c
				}
				first.Close()
				if _, err := io.Copy(io.Discard, second); err != nil {
					return err
				}
			case "reset":
				if err := c.(*net.TCPConn).CloseWrite(); err != nil {
					return err
				}
				if err := waitTCPState(c.(*net.TCPConn), unix.BPF_TCP_FIN_WAIT2); err != nil {
					return err
				}
				s.(*net.TCPConn).SetLinger(0) // close sends a reset
				s.Close()
				if _, err := io.Copy(io.Discard, c); err == nil {
					return fmt.Errorf("reset: the client read EOF, not a reset")
				}
			}
			c.Close()
			s.Close()
			fmt.Printf("%s %d\n", kind, c.LocalAddr().(*net.TCPAddr).Port)
		}
	}
	fmt.Println("done")
	waitLine(in, "exit")
	ln.Close()
	return nil
}

// waitTCPState waits until c's socket is in state.
func waitTCPState(c *net.TCPConn, state int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var info *unix.TCPInfo
		var ierr error
		if err := raw.Control(func(fd uintptr) {
			info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		}); err != nil {
			return err
		}
		if ierr != nil {
			return ierr
		}
		if int(info.State) == state {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("socket in state %d, want %d", info.State, state)
		}
		time.Sleep(time.Millisecond)
	}
}

// timeWaitSockets lists the TIME_WAIT sockets of pid's network namespace
// (the kernel's /proc/net/tcp, state 06), as "lport rport".
func timeWaitSockets(t *testing.T, pid int) map[string]bool {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 || fs[3] != "06" {
			continue
		}
		port := func(a string) uint64 {
			_, p, _ := strings.Cut(a, ":")
			n, err := strconv.ParseUint(p, 16, 16)
			if err != nil {
				t.Fatalf("/proc/net/tcp: bad address %q", a)
			}
			return n
		}
		out[fmt.Sprintf("%d %d", port(fs[1]), port(fs[2]))] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// timeWaitCounts counts the timewait sockets of process pid's namespace: to
// the peer at twPort from ephemeral ports (40000 on, ports of them), of
// connections accepted on twPort, and to oldPort; it waits up to 5 s for
// the counts wanted (the last close of a workload may still be under way).
func timeWaitCounts(t *testing.T, pid, twPort, oldPort, ports, wantPeer, wantAccepted, wantOld int) (toPeer, accepted, toOld int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		toPeer, accepted, toOld = 0, 0, 0
		for s := range timeWaitSockets(t, pid) {
			var l, r int
			fmt.Sscanf(s, "%d %d", &l, &r)
			switch {
			case r == twPort && l >= 40000 && l < 40000+ports:
				toPeer++
			case l == twPort:
				accepted++
			case oldPort != 0 && r == oldPort:
				toOld++
			}
		}
		if toPeer == wantPeer && accepted == wantAccepted && toOld == wantOld || time.Now().After(deadline) {
			return toPeer, accepted, toOld
		}
	}
}

// TestTimeWait: no socket ever changes into TIME_WAIT (a timewait socket
// takes its place as it closes), yet --state TIME_WAIT must deliver exactly
// the closes that left one, and time_wait must mark exactly those among all
// changes into CLOSE: compared with the namespace's TIME_WAIT sockets in
// /proc/net/tcp, with closes by the client, by the server, and resets of a
// socket in FIN_WAIT2 (which leave none) in between. On every hook path.
func TestTimeWait(t *testing.T) {
	needRoot(t)
	for _, kind := range []string{"", "raw_tp", "tracepoint"} {
		name := kind
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) { testTimeWait(t, kind) })
	}
}

func testTimeWait(t *testing.T, kind string) {
	const n, port = 4, 7031
	var hook []string
	if kind != "" {
		hook = []string{"--hook-kind", kind}
	}
	ns := newNetNS(t)
	all := startTracer(t, append(hook, "--events", "states", "--port", strconv.Itoa(port))...)
	tw := startTracer(t, append(hook, "--events", "states", "--state", "TIME_WAIT")...)
	w := startRole(t, ns, "timewait", "-addr", fmt.Sprintf("127.0.0.1:%d", port), "-n", strconv.Itoa(n))
	want := map[string]bool{}   // the sockets the workload left in TIME_WAIT, "lport rport"
	resets := map[string]bool{} // the client sockets reset in FIN_WAIT2
	for i := 0; i < n; i++ {
		cport := w.expect("client-first")
		want[cport+" "+strconv.Itoa(port)] = true
		cport = w.expect("server-first")
		want[strconv.Itoa(port)+" "+cport] = true
		cport = w.expect("reset")
		resets[cport+" "+strconv.Itoa(port)] = true
	}
	w.expect("done")
	defer w.exit()

	// The kernel's own list first: the workload did what it says. (A timewait
	// socket handed over in FIN_WAIT2 lists as TIME_WAIT once the peer's FIN
	// is processed, which a loaded machine may defer for a moment.)
	truth := timeWaitSockets(t, w.pid())
	for deadline := time.Now().Add(5 * time.Second); fmt.Sprint(truth) != fmt.Sprint(want) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		truth = timeWaitSockets(t, w.pid())
	}
	if fmt.Sprint(truth) != fmt.Sprint(want) {
		t.Fatalf("TIME_WAIT sockets in /proc/net/tcp: %v, want %v", truth, want)
	}
	if o := netstat(t, w.pid())["TCPTimeWaitOverflow"]; o != 0 {
		t.Fatalf("TCPTimeWaitOverflow %d: the timewait table was full", o)
	}

	// Every change into CLOSE of the connections: client and server socket each.
	closes := func() []record {
		var out []record
		for _, r := range all.states(ns) {
			if r.NewState == "CLOSE" && r.OldState != "LISTEN" {
				out = append(out, r)
			}
		}
		return out
	}
	deadline := time.Now().Add(waitLong)
	for len(closes()) < 6*n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	marked := map[string]bool{}
	for _, r := range closes() {
		key := fmt.Sprintf("%d %d", r.LPort, r.RPort)
		if r.TimeWait == nil {
			t.Errorf("a change into CLOSE without time_wait: %s", r)
			continue
		}
		if *r.TimeWait {
			marked[key] = true
		}
		if *r.TimeWait != want[key] {
			t.Errorf("time_wait %v, but /proc/net/tcp says %v: %s", *r.TimeWait, want[key], r)
		}
		if resets[key] && r.OldState != "FIN_WAIT2" {
			t.Errorf("the reset client socket closed from %s, not FIN_WAIT2: the test did not test that", r.OldState)
		}
	}
	if len(closes()) != 6*n || len(marked) != len(want) {
		t.Errorf("%d changes into CLOSE (want %d), %d marked time_wait (want %d):\n%s",
			len(closes()), 6*n, len(marked), len(want), dump(all.states(ns)))
	}
	for _, r := range all.states(ns) {
		if r.NewState != "CLOSE" && r.TimeWait != nil {
			t.Errorf("time_wait on a change into %s: %s", r.NewState, r)
		}
	}

	// --state TIME_WAIT: exactly those, from the socket's owner.
	tw.waitStates(ns, len(want))
	tw.stopClean() // then nothing more may come
	got := tw.states(ns)
	seen := map[string]bool{}
	for _, r := range got {
		key := fmt.Sprintf("%d %d", r.LPort, r.RPort)
		if !want[key] || seen[key] || r.NewState != "CLOSE" || r.TimeWait == nil || !*r.TimeWait ||
			(r.OldState != "FIN_WAIT2" && r.OldState != "CLOSING") || r.PID != w.pid() {
			t.Errorf("--state TIME_WAIT delivered %s (want one record per socket of %v, owner %d)", r, want, w.pid())
		}
		seen[key] = true
	}
	if len(seen) != len(want) {
		t.Errorf("--state TIME_WAIT delivered %d sockets, want %d", len(seen), len(want))
	}
}

// twProcess is a row of `tcptrace timewait -o json`.
type twProcess struct {
	Time        string  `json:"time"`
	Window      float64 `json:"window_seconds"`
	NetNS       uint32  `json:"netns"`
	PID         int     `json:"pid"`
	BeforeStart bool    `json:"before_start"`
	Comm        string  `json:"comm"`
	TimeWait    int     `json:"time_wait"`
	Connects    int     `json:"connects"`
	NoPort      int     `json:"no_port"`
	Peers       []struct {
		RAddr     string   `json:"raddr"`
		RPort     *int     `json:"rport"`
		LPort     *int     `json:"lport"`
		TimeWait  int      `json:"time_wait"`
		Connects  int      `json:"connects"`
		NoPort    int      `json:"no_port"`
		Ephemeral int      `json:"time_wait_ephemeral"`
		Ports     *int     `json:"ephemeral_ports"`
		Share     *float64 `json:"ephemeral_share"`
	} `json:"peers"`
}

// TestTimeWaitTable: `tcptrace timewait` ranks the processes behind TIME_WAIT
// and ephemeral port use. One process leaves timewait sockets on both sides
// of its own connections (its namespace's ephemeral range: 10,000 ports),
// another connects until no port is left (10 ports; TIME_WAIT never reused
// in either), a third closes a connection it made before tcptrace started. Per process and peer the table must say what the namespace's
// own socket list (/proc/net/tcp) and the workloads' connect() calls say:
// the timewait sockets to the peer and the part of the range they hold,
// those of accepted connections by local port, the connects made, the
// EADDRNOTAVAIL.
func TestTimeWaitTable(t *testing.T) {
	needRoot(t)
	const n, twPort, exPort, ports, exPorts = 4, 7323, 7324, 10000, 10
	// Two namespaces: the 3n connections of the first must not use a port
	// twice, as a port used again would end a timewait socket of the
	// accepted side (a SYN for its connection takes its place); the kernel
	// picks ports with random steps, so a wide range.
	ns, exNS := newNetNS(t), newNetNS(t)
	for _, s := range []struct {
		ns        *netNS
		portRange string
	}{{ns, "40000 49999"}, {exNS, "40000 40009"}} {
		if err := s.ns.sysctl("net/ipv4/ip_local_port_range", s.portRange); err != nil {
			t.Fatal(err)
		}
		if err := s.ns.sysctl("net/ipv4/tcp_tw_reuse", "0"); err != nil {
			t.Fatal(err)
		}
	}
	// A connection older than tcptrace, which its client closes first once
	// tcptrace runs: its timewait socket is the client's too (the close()
	// names the owner).
	const oldPort = 7325
	srv := startRole(t, ns, "server", "-addr", fmt.Sprintf("127.0.0.1:%d", oldPort))
	srv.expect("listening")
	old := startRole(t, ns, "client", "-addr", fmt.Sprintf("127.0.0.1:%d", oldPort), "-hold")
	old.expect("connected")
	srv.expect("accepted")

	rows := startRows[twProcess](t, "counting closes into TIME_WAIT",
		"timewait", "-o", "json", "--interval", "300ms", "--port", fmt.Sprintf("%d,%d,%d", twPort, exPort, oldPort))

	old.send("close")
	old.expect("closed")
	srv.expect("closed")
	w := startRole(t, ns, "timewait", "-addr", fmt.Sprintf("127.0.0.1:%d", twPort), "-n", strconv.Itoa(n))
	for range n {
		w.expect("client-first")
		w.expect("server-first")
		w.expect("reset")
	}
	w.expect("done")
	defer w.exit()
	ex := startRole(t, exNS, "exhaust", "-addr", fmt.Sprintf("127.0.0.1:%d", exPort))
	defer ex.exit()
	got := ex.expect("exhausted")
	made, err := strconv.Atoi(strings.TrimSuffix(got, " EADDRNOTAVAIL"))
	if err != nil || made != exPorts || !strings.HasSuffix(got, " EADDRNOTAVAIL") {
		t.Fatalf("the exhausting workload's connects: %q, want %d made, then EADDRNOTAVAIL", got, exPorts)
	}

	// The namespace's timewait sockets: to the peer (from ports of the
	// range) and of accepted connections (on the listening port).
	toPeer, accepted, toOld := timeWaitCounts(t, w.pid(), twPort, oldPort, ports, n, n, 1)
	if toPeer != n || accepted != n || toOld != 1 {
		all, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", w.pid()))
		t.Fatalf("the kernel lists %d timewait sockets to the peer, %d of accepted connections, %d of the older connection; want %d, %d, 1; the namespace's sockets:\n%s",
			toPeer, accepted, toOld, n, n, all)
	}

	// The first refresh that has counted all of it.
	var tw, exh, cl *twProcess
	deadline := time.After(waitLong)
	for tw == nil || exh == nil || cl == nil {
		select {
		case p, ok := <-rows:
			if !ok {
				t.Fatal("timewait exited")
			}
			switch {
			case p.PID == w.pid() && p.TimeWait == toPeer+accepted && p.Connects == 3*n:
				tw = &p
			case p.PID == ex.pid() && p.NoPort == 1 && p.Connects == made:
				exh = &p
			case p.PID == old.pid() && p.TimeWait == toOld:
				cl = &p
			}
		case <-deadline:
			t.Fatalf("no refresh with %d timewait sockets and %d connects for %d, %d connects and 1 without a port for %d, "+
				"1 timewait socket for %d (last: %+v, %+v, %+v)", toPeer+accepted, 3*n, w.pid(), made, ex.pid(), old.pid(), tw, exh, cl)
		}
	}
	if tw.NoPort != 0 || len(tw.Peers) != 2 {
		t.Fatalf("the timewait workload: %+v", *tw)
	}
	peer, acc := tw.Peers[0], tw.Peers[1]
	if peer.RAddr != "127.0.0.1" || peer.RPort == nil || *peer.RPort != twPort || peer.LPort != nil ||
		peer.TimeWait != toPeer || peer.Ephemeral != toPeer || peer.Connects != 3*n ||
		peer.Ports == nil || *peer.Ports != ports || peer.Share == nil || *peer.Share != float64(toPeer)/ports {
		t.Errorf("its peer 127.0.0.1:%d: %+v, want %d timewait sockets holding %d of %d ports", twPort, peer, toPeer, toPeer, ports)
	}
	if acc.RAddr != "127.0.0.1" || acc.RPort != nil || acc.LPort == nil || *acc.LPort != twPort ||
		acc.TimeWait != accepted || acc.Share != nil {
		t.Errorf("its accepted connections on port %d: %+v, want %d timewait sockets, no share", twPort, acc, accepted)
	}
	if cl.Connects != 0 || len(cl.Peers) != 1 || cl.Peers[0].RPort == nil || *cl.Peers[0].RPort != oldPort || cl.Peers[0].Ephemeral != 1 {
		t.Errorf("the older connection's client: %+v", *cl)
	}
	if exh.TimeWait != 0 || len(exh.Peers) != 1 || exh.Peers[0].RPort == nil || *exh.Peers[0].RPort != exPort {
		t.Errorf("the exhausting workload: %+v", *exh)
	}
}

// TestTimeWaitBeforeStart: what is in TIME_WAIT when `tcptrace timewait`
// starts is in its table from the first refresh: a row of its own (owner
// unknown) per namespace, each peer with the timewait sockets the
// namespace's /proc/net/tcp lists and the part of the ephemeral range they
// hold; closes after the start count for their process, and not again there.
func TestTimeWaitBeforeStart(t *testing.T) {
	needRoot(t)
	const n, twPort, ports = 4, 7326, 10000
	ns := newNetNS(t)
	for name, value := range map[string]string{"net/ipv4/ip_local_port_range": "40000 49999", "net/ipv4/tcp_tw_reuse": "0"} {
		if err := ns.sysctl(name, value); err != nil {
			t.Fatal(err)
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", twPort)
	workload := func(addr string, n int) *proc {
		w := startRole(t, ns, "timewait", "-addr", addr, "-n", strconv.Itoa(n))
		for range n {
			w.expect("client-first")
			w.expect("server-first")
			w.expect("reset")
		}
		w.expect("done")
		return w
	}
	w := workload(addr, n)
	defer w.exit()
	toPeer, accepted, _ := timeWaitCounts(t, w.pid(), twPort, 0, ports, n, n, 0)
	if toPeer != n || accepted != n {
		t.Fatalf("the kernel lists %d timewait sockets to the peer and %d of accepted connections, want %d and %d", toPeer, accepted, n, n)
	}

	rows := startRows[twProcess](t, "counting closes into TIME_WAIT",
		"timewait", "-o", "json", "--interval", "300ms", "--port", fmt.Sprintf("%d,%d", twPort, twPort+1))
	// After the start, another process: one more of each kind.
	later := workload(fmt.Sprintf("127.0.0.1:%d", twPort+1), 1)
	defer later.exit()

	var before, after *twProcess
	deadline := time.After(waitLong)
	for before == nil || after == nil {
		select {
		case p, ok := <-rows:
			if !ok {
				t.Fatal("timewait exited")
			}
			switch {
			case p.BeforeStart && p.NetNS == ns.ino:
				before = &p
			case p.PID == later.pid() && p.TimeWait == 2 && p.Connects == 3:
				after = &p
			}
		case <-deadline:
			t.Fatalf("no refresh with the row of namespace %d from before the start and 2 timewait sockets, 3 connects for %d (last: %+v, %+v)",
				ns.ino, later.pid(), before, after)
		}
	}
	if before.PID != 0 || before.TimeWait != toPeer+accepted || before.Connects != 0 || len(before.Peers) != 2 {
		t.Fatalf("the row from before the start: %+v, want %d timewait sockets, 2 peers, no process", *before, toPeer+accepted)
	}
	peer, acc := before.Peers[0], before.Peers[1]
	if peer.RPort == nil { // as many as to the peer: the accepted ones first
		peer, acc = acc, peer
	}
	if peer.RAddr != "127.0.0.1" || peer.RPort == nil || *peer.RPort != twPort || peer.LPort != nil ||
		peer.TimeWait != toPeer || peer.Ephemeral != toPeer ||
		peer.Ports == nil || *peer.Ports != ports || peer.Share == nil || *peer.Share != float64(toPeer)/ports {
		t.Errorf("its peer 127.0.0.1:%d: %+v, want %d timewait sockets holding %d of %d ports", twPort, peer, toPeer, toPeer, ports)
	}
	if acc.RAddr != "127.0.0.1" || acc.RPort != nil || acc.LPort == nil || *acc.LPort != twPort ||
		acc.TimeWait != accepted || acc.Share != nil {
		t.Errorf("its accepted connections on port %d: %+v, want %d timewait sockets, no share", twPort, acc, accepted)
	}
}

// TestPortRangeOfThreadsNamespace: timewait reads a namespace's ephemeral
// port range through a way into it, and the process its close names is often
// gone by then. A namespace can be held by one thread alone (as here, and by
// a container runtime's or a test's helper): it is found through the thread.
// (TestTimeWaitTable failed now and then under load without it: the range of
// its namespace stayed unknown when its only processes had exited.)
func TestPortRangeOfThreadsNamespace(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t) // held by a thread of this process, no process in it
	if err := ns.sysctl("net/ipv4/ip_local_port_range", "41000 41999"); err != nil {
		t.Fatal(err)
	}
	path := netns.Find(ns.ino)
	if !strings.Contains(path, "/task/") {
		t.Fatalf("netns.Find(%d) = %q, want the holding thread's /proc/PID/task/TID/ns/net", ns.ino, path)
	}
	got, err := netns.SysctlAt(path, ns.ino, "net/ipv4/ip_local_port_range")
	if err != nil || strings.Join(strings.Fields(got), " ") != "41000 41999" {
		t.Fatalf("the range through %s: %q, %v; want 41000 41999", path, got, err)
	}
	if p := netns.Find(1); p != "" {
		t.Errorf("netns.Find(1) = %q for no such namespace", p)
	}
}
