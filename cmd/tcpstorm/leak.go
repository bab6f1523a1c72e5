package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/netns"
)

// runLeak builds, in a fresh network namespace, -sockets server sockets in
// CLOSE_WAIT spread over -procs leaker processes, then prints one line
//
//	ready sockets=100000 closewait=100000 pids=101,102,... seconds=5.2
//
// and holds them until SIGTERM or SIGINT. Each leaker listens on its own
// address 127.0.0.(i+1):port and accepts its share without ever closing;
// clients here connect and close at once. A process may hold only
// RLIMIT_NOFILE descriptors (20000 where this was written, not raisable),
// hence several leakers.
func runLeak(args []string) error {
	fs := flag.NewFlagSet("tcpstorm leak", flag.ExitOnError)
	procs := fs.Int("procs", 6, "leaker processes")
	sockets := fs.Int("sockets", 100000, "CLOSE_WAIT sockets in all")
	port := fs.Int("port", 7000, "server port on each 127.0.0.N")
	clients := fs.Int("clients", 8, "client goroutines")
	fs.Parse(args)
	if *procs < 1 || *procs > 250 || *sockets < 1 || *clients < 1 {
		return errors.New("want 1 <= -procs <= 250, positive -sockets and -clients")
	}
	share := (*sockets + *procs - 1) / *procs
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	if uint64(share+64) > lim.Max {
		return fmt.Errorf("%d sockets per process exceed RLIMIT_NOFILE %d: use more -procs", share, lim.Max)
	}
	if !inFreshNetNS() {
		// A client orphan past tcp_max_orphans (a global sysctl, only
		// visible here) is reset, and its server socket leaves CLOSE_WAIT.
		if v, err := readSysctl("net/ipv4/tcp_max_orphans"); err == nil {
			if n, _ := strconv.Atoi(v); n < *sockets {
				fmt.Fprintf(os.Stderr, "tcpstorm leak: warning: net.ipv4.tcp_max_orphans=%d < %d sockets: "+
					"client orphans may be reset\n", n, *sockets)
			}
		}
		return reexecInNetNS(append([]string{"leak"}, args...))
	}
	if err := setupNetNS(); err != nil {
		return err
	}
	// A closed client socket waits in FIN_WAIT2 for tcp_fin_timeout. At the
	// default 60 s, one whose final ACK raced with its own close() (socket
	// owned by the user) is reset when that timer fires, taking its server
	// socket out of CLOSE_WAIT mid-benchmark. Longer keeps it an orphan
	// instead (counted against the global tcp_max_orphans, checked above).
	if err := netns.Sysctl("net/ipv4/tcp_fin_timeout", "3600"); err != nil {
		return err
	}
	start := time.Now()

	// Leakers first, each reporting on a pipe: "listening", then "done N".
	type leaker struct {
		cmd    *exec.Cmd
		status *bufio.Reader
		sa     *unix.SockaddrInet4
		n      int
	}
	var ls []*leaker
	defer func() {
		// Kill all, then wait: each exit closes thousands of sockets.
		for _, l := range ls {
			l.cmd.Process.Kill()
		}
		for _, l := range ls {
			l.cmd.Wait()
		}
	}()
	for i := range *procs {
		n := *sockets / *procs
		if i < *sockets%*procs {
			n++
		}
		addr := fmt.Sprintf("127.0.0.%d:%d", i+1, *port)
		sa, _ := sockaddr(addr)
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		cmd := exec.Command(self(), "leaker", "-addr", addr, "-n", strconv.Itoa(n))
		cmd.Stderr = os.Stderr
		cmd.ExtraFiles = []*os.File{w} // fd 3
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return err
		}
		w.Close()
		l := &leaker{cmd: cmd, status: bufio.NewReader(r), sa: sa, n: n}
		ls = append(ls, l)
		if line, err := l.status.ReadString('\n'); err != nil || line != "listening\n" {
			return fmt.Errorf("leaker %s did not start (%q, %v)", addr, line, err)
		}
	}

	// Clients: connection j goes to leaker j % procs, so each gets its n.
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errc = make(chan error, *clients)
	)
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j := next.Add(1) - 1
				if j >= int64(*sockets) {
					return
				}
				if err := connectClose(ls[j%int64(*procs)].sa); err != nil {
					errc <- fmt.Errorf("connection %d: %w", j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	var pids []string
	for _, l := range ls {
		line, err := l.status.ReadString('\n')
		if err != nil || line != fmt.Sprintf("done %d\n", l.n) {
			return fmt.Errorf("leaker %d: %q, %v", l.cmd.Process.Pid, line, err)
		}
		pids = append(pids, strconv.Itoa(l.cmd.Process.Pid))
	}

	// Every socket must sit in CLOSE_WAIT before anyone measures.
	var cw int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if cw, err = countCloseWait(); err != nil {
			return err
		}
		if cw == *sockets {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d sockets in CLOSE_WAIT, want %d", cw, *sockets)
		}
	}
	fmt.Printf("ready sockets=%d closewait=%d pids=%s seconds=%.1f\n",
		*sockets, cw, strings.Join(pids, ","), time.Since(start).Seconds())

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	<-sigs
	return nil // the deferred kill frees everything
}

// runLeaker listens on -addr, accepts -n connections and never closes them.
// It reports on fd 3 and waits for a signal.
func runLeaker(args []string) error {
	fs := flag.NewFlagSet("tcpstorm leaker", flag.ExitOnError)
	addr := fs.String("addr", "", "listen address")
	n := fs.Int("n", 0, "connections to accept and keep")
	fs.Parse(args)
	status := os.NewFile(3, "status")
	sa, err := sockaddr(*addr)
	if err != nil {
		return err
	}
	// Use the whole hard limit of descriptors.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	lfd, err := listenTCP(sa, 65535)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	fmt.Fprintf(status, "listening\n")
	for got := 0; got < *n; {
		_, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		switch err {
		case nil:
			got++ // the descriptor is kept open, on purpose
		case unix.EINTR, unix.ECONNABORTED:
		default:
			return fmt.Errorf("accept after %d: %w", got, err)
		}
	}
	fmt.Fprintf(status, "done %d\n", *n)
	<-sigs
	return nil
}
