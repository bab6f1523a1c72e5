package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gapCount adds up the gaps records tr has sent so far.
func gapCount(tr *tracerProc) uint64 { return tr.counted("gaps") }

// TestGapsCounted: a change no program saw leaves a hole in its socket's
// recorded history, which the kernel side notices at the socket's next
// change and reports in gaps records and the exit summary. The hidden
// --test-unseen-state makes the programs ignore every change into one state,
// as the kernel sometimes does not run them.
func TestGapsCounted(t *testing.T) {
	// Both kinds of hook that record every change (a catch program takes
	// what the kernel skips); the classic tracepoint may lose some uncounted.
	for _, kind := range []string{"tp_btf", "raw_tp"} {
		t.Run(kind, func(t *testing.T) { testGapsCounted(t, kind) })
	}
}

func testGapsCounted(t *testing.T, kind string) {
	needRoot(t)
	ns := newNetNS(t)
	const conns = 200
	truth := 10*conns + 2
	tr := startTracer(t, "--hook-kind", kind, "--port", "7021", "--events", "states", "--test-unseen-state", "FIN_WAIT2")
	storm := startRole(t, ns, "storm", "-addr", "127.0.0.1:7021", "-n", strconv.Itoa(conns))
	storm.expect("done")
	storm.wait()

	// Each socket that went through FIN_WAIT2 unseen arrives with its next
	// change, out of FIN_WAIT2, though FIN_WAIT1 was its last recorded state.
	count := func() (recs, fromFW2, intoFW2 int) {
		for _, r := range tr.states(ns) {
			recs++
			if r.OldState == "FIN_WAIT2" {
				fromFW2++
			}
			if r.NewState == "FIN_WAIT2" {
				intoFW2++
			}
		}
		return
	}
	for deadline := time.Now().Add(waitLong); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if recs, fromFW2, _ := count(); recs+fromFW2 >= truth && gapCount(tr) >= uint64(fromFW2) {
			break
		}
	}
	tr.stopClean()
	recs, fromFW2, intoFW2 := count()
	gaps := gapCount(tr)
	t.Logf("delivered %d, out of FIN_WAIT2 %d, gaps %d, truth %d", recs, fromFW2, gaps, truth)
	if intoFW2 != 0 {
		t.Fatalf("%d changes into FIN_WAIT2 delivered; the knob should hide them all", intoFW2)
	}
	if fromFW2 < conns/2 || recs+fromFW2 != truth {
		t.Fatalf("delivered %d + %d unseen != %d changes made", recs, fromFW2, truth)
	}
	if gaps != uint64(fromFW2) {
		t.Fatalf("gaps records count %d sockets, want %d (one per socket whose FIN_WAIT2 went unseen)", gaps, fromFW2)
	}
	m := regexp.MustCompile(`(\d+) sockets with gaps`).FindStringSubmatch(tr.stderrText())
	if m == nil || m[1] != strconv.Itoa(fromFW2) {
		t.Fatalf("exit summary %q does not report %d sockets with gaps", m, fromFW2)
	}
}

// TestReconnect: one socket connect()s twice, the first refused. Its second
// life's CLOSE->SYN_SENT carries that life's local port (not the first
// life's, which the socket still holds in inet_sport), and each life's
// SYN_SENT arrives once. With every CLOSE unseen (--test-unseen-state), the
// kernel side finds the first life's entry at the second life's start and
// counts its unseen end as one gap. Without connect()'s exit too (a blocking
// connect() that migrated misses it), the first life's event still gets its
// port when the second life starts.
func TestReconnect(t *testing.T) {
	for _, tc := range []struct{ name, unseen, without string }{
		{"all seen", "", ""},
		{"unseen CLOSE", "CLOSE", ""},
		{"unseen CLOSE, no connect exit", "CLOSE", "connect port, accept owner"},
	} {
		t.Run(tc.name, func(t *testing.T) { testReconnect(t, tc.unseen, tc.without) })
	}
}

func testReconnect(t *testing.T, unseen, without string) {
	needRoot(t)
	ns := newNetNS(t)
	const closed, open = 7022, 7023
	args := []string{"--port", "7022,7023", "--events", "states"}
	if unseen != "" {
		args = append(args, "--test-unseen-state", unseen)
	}
	if without != "" {
		args = append(args, "--test-without", without, "-v")
	}
	tr := startTracer(t, args...)
	if h := without + ": none not used"; without != "" && !strings.Contains(tr.stderrText(), h) {
		t.Fatalf("-v lacks %q:\n%s", h, tr.stderrText())
	}
	var lfd, fd int = -1, -1
	t.Cleanup(func() {
		for _, f := range []int{fd, lfd} {
			if f >= 0 {
				syscall.Close(f)
			}
		}
	})
	var firstPort, secondPort int
	err := ns.do(func() error {
		var err error
		if lfd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Port: open, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := syscall.Listen(lfd, 8); err != nil {
			return err
		}
		if fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: closed, Addr: [4]byte{127, 0, 0, 1}}); err != syscall.ECONNREFUSED {
			return fmt.Errorf("connect to closed port %d: %v, want ECONNREFUSED", closed, err)
		}
		// The refused connect() unhashed the port but left it in inet_sport.
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return err
		}
		firstPort = sa.(*syscall.SockaddrInet4).Port
		// The same socket (the same kernel object) connects again.
		if err := syscall.Connect(fd, &syscall.SockaddrInet4{Port: open, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if sa, err = syscall.Getsockname(fd); err != nil {
			return err
		}
		secondPort = sa.(*syscall.SockaddrInet4).Port
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if firstPort == secondPort {
		t.Fatalf("both connects used local port %d: the test cannot tell the lives apart", firstPort)
	}
	// Each life's CLOSE->SYN_SENT, by remote port, as its local ports.
	synSent := func() (toClosed, toOpen []int, established bool) {
		for _, r := range tr.states(ns) {
			if r.OldState == "CLOSE" && r.NewState == "SYN_SENT" {
				switch r.RPort {
				case closed:
					toClosed = append(toClosed, int(r.LPort))
				case open:
					toOpen = append(toOpen, int(r.LPort))
				}
			}
			established = established || r.OldState == "SYN_SENT" && r.NewState == "ESTABLISHED"
		}
		return
	}
	wantGaps := uint64(0)
	if unseen != "" {
		wantGaps = 1
	}
	deadline := time.Now().Add(waitLong)
	for time.Now().Before(deadline) {
		if _, _, est := synSent(); est && gapCount(tr) >= wantGaps {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The count is read before anything else closes: a closed socket's
	// address, reused by another traced socket, would count again.
	gaps := gapCount(tr)
	toClosed, toOpen, _ := synSent()
	tr.stopClean()
	if gaps != wantGaps {
		t.Errorf("gaps records count %d sockets, want %d", gaps, wantGaps)
	}
	if !slices.Equal(toClosed, []int{firstPort}) || !slices.Equal(toOpen, []int{secondPort}) {
		t.Errorf("CLOSE->SYN_SENT local ports: to %d %v, to %d %v; want [%d] and [%d]",
			closed, toClosed, open, toOpen, firstPort, secondPort)
	}
	if t.Failed() {
		t.Logf("records:\n%s", dump(tr.states(ns)))
	}
}
