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
