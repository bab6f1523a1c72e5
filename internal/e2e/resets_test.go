package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
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
// port+1, where no socket listens. Then "done", and it stays until "exit".
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

	fmt.Println("done")
	waitLine(in, "exit")
	return nil
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
// port) names the ends it went between and no socket. Kernels whose
// tracepoint passes no reason fire it for full sockets only: there the closed
// port's comes from tcp_v4_send_reset() (fentry, or a forced kprobe where
// the kernel has kprobes), and from the tracepoint alone it is missing, as the
// hook says ("full sockets only"). The kernel's reason is there where the
// hook says "(reason)". Their number matches the namespace's OutRsts; on
// every hook path at once; --pid of another process gets none.
func TestResetsSent(t *testing.T) {
	needRoot(t)
	const port = 7071
	ns := newNetNS(t)
	tracers := startTracerPerHook(t, "--events", "resets", "-v")
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe"); err == nil {
		tracers["kprobe"] = startTracer(t, "--events", "resets", "-v", "--hook-kind", "kprobe")
	}
	other := startTracer(t, "--events", "resets", "--pid", "1")
	before := nsCounters(t, ns)
	w := startRole(t, ns, "resets", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	defer w.wait()
	defer w.send("exit")

	type reset struct {
		lport, rport uint16
		owned        bool
	}
	want := map[string]reset{}
	for _, c := range []struct{ kind, errno string }{
		{"unread", "ECONNRESET"}, {"linger", "ECONNRESET"}, {"closed", "ECONNREFUSED"},
	} {
		fs := strings.Fields(w.expectWithin(c.kind, 30*time.Second))
		if len(fs) != 3 || fs[2] != c.errno {
			t.Fatalf("%s: the other side got %q, want %s: the workload did not do what the test needs", c.kind, fs, c.errno)
		}
		l, err1 := strconv.ParseUint(fs[0], 10, 16)
		r, err2 := strconv.ParseUint(fs[1], 10, 16)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		want[c.kind] = reset{uint16(l), uint16(r), c.kind != "closed"}
	}
	w.expect("done")
	if d := nsCounters(t, ns)["OutRsts"] - before["OutRsts"]; d != 3 {
		t.Fatalf("OutRsts grew by %d, want 3: the workload did not do what the test needs", d)
	}

	for kind, tr := range tracers {
		hook := activeHook(tr.stderrText(), "resets")
		fullOnly := strings.HasSuffix(hook, " (full sockets only)")
		reasons := strings.HasSuffix(hook, " (reason)")
		t.Logf("%s: resets via %s", kind, hook)
		n := len(want)
		if fullOnly {
			n--
		}
		var got []record
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if got = tr.records("reset", ns); len(got) >= n || time.Now().After(deadline) {
				break
			}
		}
		if len(got) != n {
			t.Errorf("%s: %d reset records, want %d (OutRsts 3, via %s):\n%s", kind, len(got), n, hook, dump(got))
			continue
		}
		for what, wr := range want {
			if what == "closed" && fullOnly {
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
			case wr.owned && (r.PID != w.pid() || r.State != "CLOSE" || r.Sock == ""):
				// An abort closes the socket first, then sends the reset.
				t.Errorf("%s: %s: %s, want owner %d, state CLOSE, a socket", kind, what, r, w.pid())
			case !wr.owned && (r.PID != 0 || r.State != "" || r.Sock != "" || reasons && r.Reason != "no_socket"):
				t.Errorf("%s: %s: %s, want no owner, state or socket, and the reason no_socket where the kernel gives one", kind, what, r)
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
